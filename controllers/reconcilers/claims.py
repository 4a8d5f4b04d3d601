"""The PersistentVolumeClaim a DataVolume owns, as CDI creates it.

The claim carries the DataVolume as its controlling owner, so deleting the
DataVolume deletes the claim (garbage collection on Kubernetes, the
embedded store's cascade at home). On the embedded store nothing binds
claims, so the reconciler marks them Bound itself (``bind_locally``).
"""

from __future__ import annotations

from typing import Any

from controllers.api.kinds import PERSISTENTVOLUMECLAIM
from controllers.errors import AlreadyExists, NotFound
from controllers.store.protocol import Object, Store


def claim_for(dv: Object, size: int) -> Object:
    md, spec = dv["metadata"], dv["spec"]
    wanted = spec.get("storage") or spec.get("pvc") or {}
    claim_spec: dict[str, Any] = {
        "accessModes": wanted.get("accessModes") or ["ReadWriteOnce"],
        "volumeMode": "Block" if wanted.get("volumeMode") == "Block" else "Filesystem",
        "resources": {"requests": {"storage": str(size)}},
    }
    if wanted.get("storageClassName"):
        claim_spec["storageClassName"] = wanted["storageClassName"]
    owner = {
        "apiVersion": dv.get("apiVersion", "cdi.kubevirt.io/v1beta1"),
        "kind": "DataVolume",
        "name": md["name"],
        "uid": md["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "metadata": {
            "name": md["name"],
            "namespace": md.get("namespace") or "default",
            "labels": {
                "app": "containerized-data-importer",
                "app.kubernetes.io/part-of": "diskplane",
            },
            "ownerReferences": [owner],
        },
        "spec": claim_spec,
    }


async def ensure_claim(store: Store, dv: Object, size: int, bind_locally: bool) -> Object:
    """The DataVolume's claim, created if missing; Bound at once when ``bind_locally``."""
    md = dv["metadata"]
    namespace = md.get("namespace") or "default"
    try:
        claim = await store.get(PERSISTENTVOLUMECLAIM, namespace, md["name"])
    except NotFound:
        try:
            claim = await store.create(PERSISTENTVOLUMECLAIM, claim_for(dv, size))
        except AlreadyExists:
            claim = await store.get(PERSISTENTVOLUMECLAIM, namespace, md["name"])
    if bind_locally and (claim.get("status") or {}).get("phase") != "Bound":
        claim = await store.patch_status(
            PERSISTENTVOLUMECLAIM,
            namespace,
            md["name"],
            {
                "phase": "Bound",
                "accessModes": claim["spec"].get("accessModes"),
                "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            },
        )
    return claim


def owned_by(claim: Object, dv: Object) -> bool:
    uid = dv["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in claim["metadata"].get("ownerReferences") or [])
