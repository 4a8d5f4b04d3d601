"""Node-local imports in cluster mode: the claim's PV lives in one node's volume pool and
that node's importer service writes it.

For a DataVolume whose claim asks for :data:`LOCAL_STORAGE_CLASS` (or names no
class), :class:`NodeLocalImporter`

1. picks a fresh registered node that serves an importer service (the ``Node``
   records of :mod:`controllers.nodes`, annotated with the importer's URL and
   data dir; most free memory first) unless the claim already has a PV;
2. creates a ``local`` PersistentVolume pre-bound to the claim (``claimRef``
   with its uid): path ``<node data dir>/volumes/<namespace>/<name>``, node
   affinity ``kubernetes.io/hostname=<node>``, reclaim policy ``Retain``.
   kube-controller-manager's PV binder then binds claim and volume; nothing
   is provisioned by Kubernetes itself;
3. once the claim is ``Bound``, hands the job to that node's importer service
   (:class:`~controllers.reconcilers.service_importer.ServiceImporter`, target
   = the PV's pool volume ``<namespace>/<name>``).

Cancelling (the DataVolume's finalizer) cancels the node's job, removes the
pool volume when the node's data dir is on this machine (single-node setups;
the importer service has no volume-delete call for remote nodes) and deletes
the PV. Claims of any other storage class fail with ``UnsupportedStorageClass``:
only the one-shot importer pod flavour could write those (not built here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from controllers.api.kinds import PERSISTENTVOLUMECLAIM, ResourceKind
from controllers.errors import AlreadyExists, ControllersError, NotFound
from controllers.nodes import NodeDirectory, NodeInfo
from controllers.reconcilers.importer import ImportJob, ImportState, ImportStatus, Key
from controllers.reconcilers.service_importer import ServiceImporter
from controllers.store.protocol import Object, Store

PERSISTENTVOLUME = ResourceKind(
    "", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", ("pv",), False
)
LOCAL_STORAGE_CLASS = "diskplane-local"
NODE_LABEL = "diskplane.io/node"
CLAIM_NAMESPACE_LABEL = "diskplane.io/claim-namespace"
CLAIM_NAME_LABEL = "diskplane.io/claim-name"
HOSTNAME_LABEL = "kubernetes.io/hostname"


class NoImporterNode(ControllersError):
    """No registered node serves an importer service (retried with backoff)."""


def pv_name(claim: Object) -> str:
    return f"diskplane-{claim['metadata']['uid']}"


def local_pv(claim: Object, node: NodeInfo) -> Object:
    """The ``local`` PV in ``node``'s volume pool, pre-bound to ``claim``."""
    md, spec = claim["metadata"], claim["spec"]
    namespace = md.get("namespace") or "default"
    path = Path(node.data_dir) / "volumes" / namespace / md["name"]
    term = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node.name]}]}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(claim),
            "labels": {
                "app.kubernetes.io/part-of": "diskplane",
                NODE_LABEL: node.name,
                CLAIM_NAMESPACE_LABEL: namespace,
                CLAIM_NAME_LABEL: md["name"],
            },
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "storageClassName": spec.get("storageClassName") or "",
            "persistentVolumeReclaimPolicy": "Retain",
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [term]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": md["name"],
                "uid": md["uid"],
            },
        },
    }


class NodeLocalImporter:
    """An :class:`~controllers.reconcilers.importer.Importer` over the nodes' importer services."""

    def __init__(
        self, store: Store, nodes: NodeDirectory, storage_class: str = LOCAL_STORAGE_CLASS
    ) -> None:
        self.store, self.nodes, self.storage_class = store, nodes, storage_class
        self._importers: dict[str, ServiceImporter] = {}  # by importer URL
        self._listener: Callable[[Key], None] = lambda key: None

    def set_listener(self, listener: Callable[[Key], None]) -> None:
        self._listener = listener
        for importer in self._importers.values():
            importer.set_listener(listener)

    async def ensure(self, job: ImportJob) -> ImportStatus:
        claim = await self.store.get(PERSISTENTVOLUMECLAIM, *job.key)
        wanted = claim["spec"].get("storageClassName") or ""
        if wanted not in ("", self.storage_class):
            return ImportStatus(
                ImportState.FAILED,
                reason="UnsupportedStorageClass",
                message=f"claim {job.namespace}/{job.name} asks for storage class {wanted};"
                f" diskplane imports only into node-local {self.storage_class} volumes",
            )
        pv = await self._ensure_pv(claim)
        if (claim.get("status") or {}).get("phase") != "Bound":
            return ImportStatus(ImportState.SCHEDULED)
        node = await self._node_of(pv)
        return await self._importer_for(node).ensure(job)

    async def _ensure_pv(self, claim: Object) -> Object:
        try:
            return await self.store.get(PERSISTENTVOLUME, "", pv_name(claim))
        except NotFound:
            pass
        candidates = [n for n in await self.nodes.importer_nodes() if n.data_dir]
        if not candidates:
            md = claim["metadata"]
            raise NoImporterNode(
                f"no registered node serves an importer service for claim"
                f" {md.get('namespace')}/{md['name']}"
            )
        try:
            return await self.store.create(PERSISTENTVOLUME, local_pv(claim, candidates[0]))
        except AlreadyExists:
            return await self.store.get(PERSISTENTVOLUME, "", pv_name(claim))

    async def _node_of(self, pv: Object) -> NodeInfo:
        name = (pv["metadata"].get("labels") or {}).get(NODE_LABEL, "")
        node = await self.nodes.get(name)
        if node is None or not node.importer_url:
            raise NoImporterNode(
                f"PV {pv['metadata']['name']} is on node {name}, which serves no importer service"
            )
        return node

    def _importer_for(self, node: NodeInfo) -> ServiceImporter:
        importer = self._importers.get(node.importer_url)
        if importer is None:
            local = Path(node.data_dir)
            importer = ServiceImporter(
                node.importer_url, data_dir=local if local.is_dir() else None
            )
            importer.set_listener(self._listener)
            self._importers[node.importer_url] = importer
        return importer

    async def cancel(self, namespace: str, name: str) -> None:
        selector = f"{CLAIM_NAMESPACE_LABEL}={namespace},{CLAIM_NAME_LABEL}={name}"
        for pv in (await self.store.list(PERSISTENTVOLUME, None, selector)).items:
            node = await self.nodes.get((pv["metadata"].get("labels") or {}).get(NODE_LABEL, ""))
            if node is not None and node.importer_url:
                await self._importer_for(node).cancel(namespace, name)
            await self.store.delete(PERSISTENTVOLUME, "", pv["metadata"]["name"])

    async def close(self) -> None:
        importers, self._importers = list(self._importers.values()), {}
        await asyncio.gather(*(i.close() for i in importers))
