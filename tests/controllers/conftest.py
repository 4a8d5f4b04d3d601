"""Fixtures for the controllers tests: one store contract, two stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controllers.api import NAMESPACE
from controllers.store import EmbeddedStore, Store
from controllers.store.kubernetes import KubernetesStore
from tests.support.kube import KubeCluster

# Small, so the contract tests can push a watch version out of the embedded log.
TEST_CHANGE_LOG_LIMIT = 50


@dataclass
class StoreUnderTest:
    name: str
    store: Store
    namespace: str
    cluster: KubeCluster | None = None


@pytest.fixture(params=["embedded", pytest.param("kubernetes", marks=pytest.mark.kube)])
async def store_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreUnderTest]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    if request.param == "embedded":
        embedded = await EmbeddedStore.open(tmp_path / "data", TEST_CHANGE_LOG_LIMIT)
        try:
            yield StoreUnderTest("embedded", embedded, namespace)
        finally:
            await embedded.close()
        return
    cluster: KubeCluster = request.getfixturevalue("kube_cluster")
    kube = KubernetesStore.from_kubeconfig(str(cluster.kubeconfig), cluster.context)
    await kube.create(NAMESPACE, {"metadata": {"name": namespace}})
    try:
        yield StoreUnderTest("kubernetes", kube, namespace, cluster)
    finally:
        await kube.delete(NAMESPACE, "", namespace)
        await kube.close()
