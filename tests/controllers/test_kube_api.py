"""The generated CRDs on a real kube-apiserver: accepted, structural, validating."""

from __future__ import annotations

import pytest
import yaml

from controllers import crdgen
from controllers.api import CUSTOM_KINDS, DATAVOLUME, VIRTUALMACHINE
from controllers.errors import Invalid
from controllers.store.kubernetes import KubernetesStore
from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube


def test_crds_are_established_with_printer_columns(kube_cluster: KubeCluster) -> None:
    for kind in CUSTOM_KINDS:
        name = f"{kind.plural}.{kind.group}"
        status, crd = kube_cluster.request(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        )
        assert status == 200
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions.get("NonStructuralSchema", "False") == "False"
        served = crd["spec"]["versions"][0]
        expected = yaml.safe_load(crdgen.render(kind))["spec"]["versions"][0]
        assert served["additionalPrinterColumns"] == expected["additionalPrinterColumns"]


def _dv(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "source": {"http": {"url": "http://x/d.qcow2"}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}},
        },
    }


async def test_server_side_validation_rejects_bad_values(kube_cluster: KubeCluster) -> None:
    store = KubernetesStore.from_kubeconfig(str(kube_cluster.kubeconfig), kube_cluster.context)
    try:
        bad_vm = yaml.safe_load(
            (crdgen.DEFAULT_DIR.parents[2] / "examples" / "vm-containerdisk.yaml").read_text()
        )
        bad_vm["metadata"]["name"] = "bad-vm"
        bad_vm["spec"]["runStrategy"] = "Sometimes"
        with pytest.raises(Invalid, match="runStrategy"):
            await store.create(VIRTUALMACHINE, bad_vm)
        bad_dv = _dv("bad-size")
        bad_dv["spec"]["storage"]["resources"]["requests"]["storage"] = "lots"  # type: ignore[index]
        with pytest.raises(Invalid, match="storage"):
            await store.create(DATAVOLUME, bad_dv)
        await store.create(DATAVOLUME, _dv("good"))
        with pytest.raises(Invalid, match="phase"):
            await store.patch_status(DATAVOLUME, "default", "good", {"phase": "Done"})
        ok = await store.patch_status(DATAVOLUME, "default", "good", {"phase": "Succeeded"})
        assert ok["status"]["phase"] == "Succeeded"
        # Kubernetes 1.20 prunes unknown fields instead of rejecting them; the client-side
        # schema walker (diskplane apply) is what rejects them, naming the path.
        unknown = _dv("unknown-field")
        unknown["spec"]["bogus"] = 1  # type: ignore[index]
        created = await store.create(DATAVOLUME, unknown)
        assert "bogus" not in created["spec"]
    finally:
        for name in ("good", "unknown-field"):
            await store.delete(DATAVOLUME, "default", name)
        await store.close()
