"""``diskplane apply/get/describe/delete`` in a subprocess, on the embedded store and a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from controllers.api import DATAVOLUME
from controllers.store import EmbeddedStore
from tests.support.kube import KubeCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLI_TIMEOUT = 60.0
WATCH_LINE_TIMEOUT = 20.0


def diskplane(
    data_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def example_count() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    return counts


def test_apply_examples_then_get_round_trip(tmp_path: Path) -> None:
    first = diskplane(tmp_path, "apply", "-f", str(EXAMPLES))
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # the examples use no upstream-only fields
    assert "datavolume.cdi.kubevirt.io/debian-http created" in first.stdout
    again = diskplane(tmp_path, "apply", "-f", str(EXAMPLES / "datavolume-http.yaml"))
    assert again.stdout.strip() == "datavolume.cdi.kubevirt.io/debian-http unchanged"

    listing = json.loads(diskplane(tmp_path, "get", "dv", "-o", "json").stdout)
    assert listing["kind"] == "List"
    assert len(listing["items"]) == example_count()["DataVolume"]
    one = yaml.safe_load(diskplane(tmp_path, "get", "dv", "debian-http", "-o", "yaml").stdout)
    source = yaml.safe_load((EXAMPLES / "datavolume-http.yaml").read_text())
    assert one["spec"] == source["spec"]
    assert one["metadata"]["uid"]

    table = diskplane(tmp_path, "get", "vm").stdout.splitlines()
    assert table[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    assert {line.split()[0] for line in table[1:]} == {"cirros", "debian"}
    wide = diskplane(tmp_path, "get", "vmi", "-o", "wide").stdout.splitlines()[0]
    assert "LIVE-MIGRATABLE" in wide


def test_apply_updates_warns_and_rejects(tmp_path: Path) -> None:
    dv = yaml.safe_load((EXAMPLES / "datavolume-blank.yaml").read_text())
    dv["metadata"]["labels"] = {"team": "storage"}
    dv["spec"]["priorityClassName"] = "high"
    applied = diskplane(tmp_path, "apply", "-f", "-", stdin=json.dumps(dv))
    assert applied.returncode == 0, applied.stderr
    assert "Warning: <stdin>: spec.priorityClassName: accepted but not implemented" in (
        applied.stderr
    )
    dv["metadata"]["labels"] = {"team": "compute"}
    changed = diskplane(tmp_path, "apply", "-f", "-", stdin=yaml.safe_dump(dv))
    assert changed.stdout.strip() == "datavolume.cdi.kubevirt.io/scratch configured"
    selected = diskplane(tmp_path, "get", "dv", "-l", "team=compute", "-o", "name")
    assert selected.stdout.strip() == "datavolume.cdi.kubevirt.io/scratch"

    bad = yaml.safe_load((EXAMPLES / "vm-datavolume.yaml").read_text())
    bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["buss"] = "virtio"
    docs = yaml.safe_dump(dv) + "---\n" + yaml.safe_dump(bad)
    rejected = diskplane(tmp_path, "apply", "-f", "-", stdin=docs)
    assert rejected.returncode == 1
    assert "spec.template.spec.domain.devices.disks[0].disk.buss: unknown field" in (
        rejected.stderr
    )
    assert "document 2" in rejected.stderr
    # Nothing of a rejected batch is applied.
    assert diskplane(tmp_path, "get", "vm", "-o", "name").stdout == ""


def test_describe_and_delete(tmp_path: Path) -> None:
    diskplane(tmp_path, "apply", "-f", str(EXAMPLES / "datavolume-upload.yaml"))
    described = diskplane(tmp_path, "describe", "dv", "uploaded")
    assert described.returncode == 0, described.stderr
    assert "Name:         uploaded" in described.stdout
    assert "upload: {}" in described.stdout
    deleted = diskplane(tmp_path, "delete", "dv", "uploaded")
    assert deleted.stdout.strip() == 'datavolume.cdi.kubevirt.io "uploaded" deleted'
    missing = diskplane(tmp_path, "get", "dv", "uploaded")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    unknown = diskplane(tmp_path, "get", "gadgets")
    assert unknown.returncode == 1
    assert 'resource type "gadgets"' in unknown.stderr


class LineReader:
    """Lines from a child's stdout, each read bounded by a timeout."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.buffer = b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(self.fd, selectors.EVENT_READ)
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError(f"no output line from the watch within {timeout} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError(f"the watch exited; it printed {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def test_get_watch_shows_changes_made_by_another_process(tmp_path: Path) -> None:
    diskplane(tmp_path, "apply", "-f", str(EXAMPLES / "datavolume-blank.yaml"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    watch = subprocess.Popen(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(tmp_path), "get", "dv", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    lines = LineReader(watch)
    try:
        assert lines.line(WATCH_LINE_TIMEOUT).split()[0] == "NAME"
        assert lines.line(WATCH_LINE_TIMEOUT).split()[0] == "scratch"

        async def progress() -> None:
            store = await EmbeddedStore.open(tmp_path)
            try:
                await store.patch_status(
                    DATAVOLUME,
                    "default",
                    "scratch",
                    {"phase": "ImportInProgress", "progress": "45.00%"},
                )
            finally:
                await store.close()

        started = time.monotonic()
        asyncio.run(progress())
        row = lines.line(WATCH_LINE_TIMEOUT).split()
        assert row[:3] == ["scratch", "ImportInProgress", "45.00%"]
        assert time.monotonic() - started < 5
    finally:
        watch.terminate()
        watch.communicate(timeout=CLI_TIMEOUT)


@pytest.mark.kube
def test_the_same_yaml_applies_to_a_cluster(tmp_path: Path, kube_cluster: KubeCluster) -> None:
    flags = ["--kubeconfig", str(kube_cluster.kubeconfig), "-n", "default"]
    applied = diskplane(tmp_path, "apply", "-f", str(EXAMPLES), *flags)
    assert applied.returncode == 0, applied.stderr
    listing = json.loads(diskplane(tmp_path, "get", "dv", "-o", "json", *flags).stdout)
    names = {item["metadata"]["name"] for item in listing["items"]}
    assert "debian-http" in names
    again = diskplane(tmp_path, "apply", "-f", str(EXAMPLES), *flags)
    assert "configured" not in again.stdout, again.stdout
    vm = yaml.safe_load(diskplane(tmp_path, "get", "vm", "debian", "-o", "yaml", *flags).stdout)
    source = yaml.safe_load((EXAMPLES / "vm-datavolume.yaml").read_text())
    assert vm["spec"] == source["spec"]  # nothing pruned by the CRD schema
    deleted = diskplane(tmp_path, "delete", "-f", str(EXAMPLES), *flags)
    assert deleted.returncode == 0, deleted.stderr
    assert diskplane(tmp_path, "get", "dv", "-o", "name", *flags).stdout == ""
    assert not (tmp_path / "store.db").exists()  # a cluster run never touches the data dir
