"""The Helm chart lints and renders with Helm's own engine (helm-python-sdk, offline).

Rendered RBAC must cover every kind the cluster-side controllers touch, the
Deployment must run the leader-elected controllers under the chart's
ServiceAccount, and the chart's CRDs must be the generated ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controllers.api import (
    DATAVOLUME,
    EVENT,
    LEASE,
    PERSISTENTVOLUMECLAIM,
    SECRET,
    VIRTUALMACHINE,
    VIRTUALMACHINEINSTANCE,
)
from controllers.node_local import PERSISTENTVOLUME
from controllers.nodes import NODE

helm = pytest.importorskip("helm_python")

CHART = Path(__file__).resolve().parents[2] / "charts" / "diskplane"
NAMESPACE = "diskplane-system"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    try:
        out = chart.render(name="dp", namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    docs = [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def test_chart_lints_without_errors_or_warnings() -> None:
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version="v1.20.2")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_rendered_rbac_covers_what_the_controllers_touch(rendered: list[dict[str, Any]]) -> None:
    role = one(rendered, "ClusterRole")
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    full = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for kind in (DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE):
        assert granted[(kind.group, kind.plural)] >= full
        assert (kind.group, f"{kind.plural}/status") in granted
    assert granted[("", PERSISTENTVOLUMECLAIM.plural)] >= {"get", "list", "watch", "create"}
    assert granted[("", SECRET.plural)] >= {"get"}
    assert granted[("", NODE.plural)] >= {"get", "list", "watch", "create", "update"}
    assert granted[("", PERSISTENTVOLUME.plural)] >= {"get", "list", "create", "delete"}
    assert granted[("", EVENT.plural)] >= {"create", "update"}
    assert granted[(LEASE.group, LEASE.plural)] >= {"get", "create", "update"}
    binding = one(rendered, "ClusterRoleBinding")
    account = one(rendered, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_rendered_deployment_runs_leader_elected_controllers(
    rendered: list[dict[str, Any]],
) -> None:
    deployment = one(rendered, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(rendered, "ServiceAccount")["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["controllers", "--in-cluster"]
    assert container["args"][container["args"].index("--lease") + 1] == "diskplane-controllers"
    selector = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_values_change_the_render() -> None:
    chart = helm.Chart.load(CHART)
    try:
        out = chart.render(
            {"controller": {"replicas": 3}, "serviceAccount": {"create": False, "name": "mine"}},
            name="dp",
            namespace=NAMESPACE,
            is_install=True,
        )
    finally:
        chart.close()
    docs = [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]
    assert "ServiceAccount" not in [d["kind"] for d in docs]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_chart_crds_are_the_generated_ones() -> None:
    chart = helm.Chart.load(CHART)
    try:
        crds = {Path(c["filename"]).name: c["data"] for c in chart.crds}
    finally:
        chart.close()
    on_disk = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(crds) == set(on_disk)
    for name, data in crds.items():
        text = data if isinstance(data, str) else bytes(data).decode()
        loaded = yaml.safe_load(text)
        assert loaded == yaml.safe_load(on_disk[name])
        assert loaded["kind"] == "CustomResourceDefinition"
