"""The steps of ``diskplane demo``: build and serve the disk, import it, boot it,
halt it, push it to a registry and pull it back, and the summary."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controllers import manifests
from controllers.api.kinds import DATAVOLUME, VIRTUALMACHINE, VIRTUALMACHINEINSTANCE
from controllers.demo.support import (
    BOOT_TIMEOUT_S,
    DISK_FILE,
    DV_NAME,
    EXAMPLES,
    HALT_TIMEOUT_S,
    IMPORT_TIMEOUT_S,
    NAMESPACE,
    POLL_INTERVAL_S,
    PROGRESS_PRINT_INTERVAL_S,
    REGISTRY_STOP_TIMEOUT_S,
    REPOSITORY,
    VM_NAME,
    DemoError,
    Printer,
    Served,
    conditions,
    disk_facts,
    follow,
    free_port,
    mib,
    read_from,
    serve_directory,
    sha256_file,
    status_of,
    wait_http_ok,
)
from controllers.store.embedded import EmbeddedStore
from controllers.store.protocol import Object
from virtnode.rundir import RunDir
from virtnode.settings import AgentSettings


@dataclass
class Facts:
    """What the summary reports."""

    disk_bytes: int = 0
    virtual_bytes: int = 0
    served_bytes: int = 0
    import_seconds: float = 0.0
    boot_seconds: float = 0.0
    vm_state: str = "-"
    accelerator: str = "-"
    registry_ref: str = "-"
    registry_digest: str = "-"
    layer_sizes: list[int] = field(default_factory=list)
    pulled_match: bool = False


# -- the manifests ------------------------------------------------------------

_DV_FALLBACK = """
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: placeholder}
spec:
  source: {http: {url: placeholder, checksum: placeholder}}
  storage: {resources: {requests: {storage: 4Gi}}}
"""

VM_YAML = f"""
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {VM_NAME}
  labels: {{kubevirt.io/vm: {VM_NAME}}}
spec:
  runStrategy: Always
  template:
    metadata:
      labels: {{kubevirt.io/vm: {VM_NAME}}}
    spec:
      terminationGracePeriodSeconds: 30
      domain:
        cpu: {{cores: 1}}
        memory: {{guest: 256Mi}}
        devices:
          disks:
            - name: root
              disk: {{bus: virtio}}
      volumes:
        - name: root
          dataVolume: {{name: {DV_NAME}}}
"""


def datavolume_yaml(url: str, sha256: str) -> tuple[str, str]:
    """examples/datavolume-http.yaml (upstream CDI YAML) pointed at the served disk."""
    source = EXAMPLES / "datavolume-http.yaml"
    text = source.read_text() if source.is_file() else _DV_FALLBACK
    doc = yaml.safe_load(text)
    doc["metadata"] = {"name": DV_NAME}
    doc["spec"]["source"]["http"] = {"url": url, "checksum": f"sha256:{sha256}"}
    doc["spec"]["storage"]["resources"]["requests"]["storage"] = "128Mi"
    origin = "examples/datavolume-http.yaml" if source.is_file() else "built-in"
    return yaml.safe_dump(doc, sort_keys=False), origin


async def apply_text(store: EmbeddedStore, text: str, directory: Path, name: str) -> None:
    """Validate like ``diskplane apply -f`` (warnings printed) and create the object."""
    path = directory / name
    path.write_text(text)
    for item in manifests.load([str(path)]):
        for warning in item.warnings:
            print(f"          Warning: {warning}", flush=True)
        await store.create(item.kind, item.object)


# -- the steps -----------------------------------------------------------------


@dataclass
class Demo:
    data_dir: Path
    work: Path
    out: Printer = field(default_factory=Printer)
    facts: Facts = field(default_factory=Facts)
    served: Served | None = None
    registry: asyncio.subprocess.Process | None = None
    printable_shown: list[str] = field(default_factory=list)

    async def build_disk(self) -> Path:
        from virtnode.tinyguest import build_tiny_guest

        began = time.monotonic()
        guest = await asyncio.to_thread(build_tiny_guest)
        disk = await asyncio.to_thread(guest.write_boot_disk, self.work / "www" / DISK_FILE)
        self.facts.disk_bytes = disk.stat().st_size
        self.facts.virtual_bytes = guest.boot_disk.stat().st_size
        self.out.step(
            f"guest disk built: {DISK_FILE}, qcow2 {mib(self.facts.disk_bytes)}"
            f" ({mib(self.facts.virtual_bytes)} virtual, kernel {guest.kernel_release})",
            time.monotonic() - began,
        )
        return disk

    async def import_disk(self, store: EmbeddedStore, disk: Path) -> None:
        self.served = await serve_directory(disk.parent, disk.name)
        self.out.step(f"served over HTTP: {self.served.url} (aiohttp static, Range)")
        digest = await asyncio.to_thread(sha256_file, disk)
        text, origin = datavolume_yaml(self.served.url, digest)
        began = time.monotonic()
        await apply_text(store, text, self.work, "datavolume.yaml")
        self.out.step(f"DataVolume {NAMESPACE}/{DV_NAME} applied ({origin}, sha256 checksum)")
        last: dict[str, Any] = {"at": 0.0, "key": ""}

        def show(obj: Object) -> None:
            status = status_of(obj)
            phase, progress = status.get("phase", "Pending"), status.get("progress", "N/A")
            key = f"{phase} {progress}"
            now = time.monotonic()
            final = phase in ("Succeeded", "Failed")
            if key == last["key"] or not (
                self.out.tty or final or now - last["at"] >= PROGRESS_PRINT_INTERVAL_S
            ):
                return
            last.update(at=now, key=key)
            assert self.served is not None
            sent, since = self.served.bytes_sent, self.served.first_request or now
            rate = sent / max(now - since, 1e-3)
            self.out.live(f"{phase:<16} {progress:>8}  {mib(sent):>10}  {mib(rate)}/s")

        def done(obj: Object) -> bool:
            phase = status_of(obj).get("phase")
            if phase == "Failed":
                raise DemoError(f"DataVolume {DV_NAME} failed: {conditions(obj)}")
            return phase == "Succeeded"

        await follow(store, DATAVOLUME, DV_NAME, done, show, IMPORT_TIMEOUT_S, "Succeeded")
        self.facts.import_seconds = time.monotonic() - began
        self.facts.served_bytes = self.served.bytes_sent
        self.out.step(f"DataVolume {DV_NAME} Succeeded", self.facts.import_seconds)

    async def boot_vm(self, store: EmbeddedStore, ready_line: str) -> None:
        began = time.monotonic()
        await apply_text(store, VM_YAML, self.work, "vm.yaml")
        self.out.step(f"VirtualMachine {NAMESPACE}/{VM_NAME} applied (runStrategy Always)")
        await self._until_printable(store, "Running", BOOT_TIMEOUT_S)
        vmi = await store.get(VIRTUALMACHINEINSTANCE, NAMESPACE, VM_NAME)
        accel = status_of(vmi).get("accelerator") or {}
        self.facts.accelerator = f"{accel.get('name', '?')} ({accel.get('reason', 'no reason')})"
        self.out.step(f"VM Running on {self.facts.accelerator}", time.monotonic() - began)
        log = RunDir.for_vm(AgentSettings(data_dir=self.data_dir).run_dir, NAMESPACE, VM_NAME)
        await self._console_until(log.launch_paths.serial_log, ready_line)
        self.facts.boot_seconds = time.monotonic() - began
        self.out.step(f"guest console reached {ready_line!r}", self.facts.boot_seconds)

    async def _until_printable(self, store: EmbeddedStore, wanted: str, limit: float) -> None:
        shown = self.printable_shown  # the VM's states so far, so none is printed twice

        def seen(obj: Object) -> None:
            value = status_of(obj).get("printableStatus")
            if value and (not shown or shown[-1] != value):
                shown.append(value)
                self.out.detail(f"VM {VM_NAME}: {value}")

        def done(obj: Object) -> bool:
            value = status_of(obj).get("printableStatus")
            if value in ("CrashLoopBackOff", "DataVolumeError", "ErrorUnschedulable"):
                raise DemoError(f"VM {VM_NAME} is {value}: {conditions(obj)}")
            return bool(value == wanted)

        await follow(store, VIRTUALMACHINE, VM_NAME, done, seen, limit, wanted)
        self.facts.vm_state = wanted

    async def _console_until(self, serial_log: Path, ready_line: str) -> None:
        async def tail() -> None:
            offset, pending = 0, b""
            while True:
                chunk = await asyncio.to_thread(read_from, serial_log, offset)
                offset += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r").rstrip()
                    if line:
                        self.out.detail(f"console | {line[:100]}")
                    if ready_line in line:
                        return
                await asyncio.sleep(POLL_INTERVAL_S)  # a file: nothing to await

        try:
            await asyncio.wait_for(tail(), BOOT_TIMEOUT_S)
        except TimeoutError:
            raise DemoError(
                f"the guest console ({serial_log}) showed no {ready_line!r}"
                f" within {BOOT_TIMEOUT_S:g} s"
            ) from None

    async def halt_vm(self, store: EmbeddedStore) -> None:
        began = time.monotonic()
        vm = await store.get(VIRTUALMACHINE, NAMESPACE, VM_NAME)
        vm["spec"]["runStrategy"] = "Halted"
        await store.update(VIRTUALMACHINE, vm)
        self.out.step(f"VM {VM_NAME}: runStrategy Halted (ACPI power button, graceful)")
        await self._until_printable(store, "Stopped", HALT_TIMEOUT_S)
        self.out.step(f"VM {VM_NAME} Stopped", time.monotonic() - began)

    async def start_registry(self) -> str:
        began = time.monotonic()
        directory = self.work / "registry"
        directory.mkdir()
        port = free_port()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(directory / "data")}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": "diskplane-demo"},
        }
        (directory / "config.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("docker-registry")
        if binary is None:
            raise DemoError("docker-registry is not on PATH; install the docker-registry package")
        with (directory / "registry.log").open("wb") as log:
            self.registry = await asyncio.create_subprocess_exec(
                binary, "serve", str(directory / "config.yml"), stdout=log, stderr=log
            )
        host = f"127.0.0.1:{port}"
        await wait_http_ok(f"http://{host}/v2/", self.registry)
        self.out.step(f"registry up: docker-registry on {host}", time.monotonic() - began)
        return host

    async def push_and_pull(self, host: str) -> None:
        from containerdisk import ContainerDiskError, RegistryClient, volume_disk

        ref = f"{host}/{REPOSITORY}"
        try:
            began = time.monotonic()
            async with RegistryClient() as client:
                disk = volume_disk(self.data_dir, f"{NAMESPACE}/{DV_NAME}")
                pushed = await client.push_disk(
                    disk, ref, format="containerdisk", disk_format="keep"
                )
                self.out.step(
                    f"volume {NAMESPACE}/{DV_NAME} pushed as a containerDisk: {ref}"
                    f" ({mib(pushed.uploaded_bytes)} sent)",
                    time.monotonic() - began,
                )
                info = await client.inspect(ref)
                layers = info.get("layers")
                self.facts.layer_sizes = [
                    int(d["size"])
                    for d in (layers if isinstance(layers, list) else [])
                    if isinstance(d, dict)
                ]
                self.facts.registry_digest = str(info["digest"])
                self.facts.registry_ref = ref
                self.out.detail(f"inspect: {info['digest']} {info['mediaType']}")
                self.out.detail(
                    f"inspect: layers {', '.join(mib(s) for s in self.facts.layer_sizes)};"
                    f" {disk_facts(info.get('disk'))}"
                )
                began = time.monotonic()
                pulled = self.work / "pulled.img"
                digest = await client.pull_disk(ref, pulled)
                pulled_sha = await asyncio.to_thread(sha256_file, pulled)
        except ContainerDiskError as exc:
            raise DemoError(f"containerDisk push/pull via {host} failed: {exc}") from exc
        self.facts.pulled_match = f"sha256:{pulled_sha}" == pushed.disk_sha256
        match = "matches" if self.facts.pulled_match else "DIFFERS from"
        self.out.step(
            f"pulled back {ref}@{digest}: {mib(pulled.stat().st_size)}, sha256 {match}"
            " the pushed disk",
            time.monotonic() - began,
        )
        if not self.facts.pulled_match:
            raise DemoError(f"the disk pulled from {ref} is not the disk that was pushed")

    async def stop_registry(self) -> None:
        if self.registry is not None and self.registry.returncode is None:
            self.registry.terminate()
            try:
                await asyncio.wait_for(self.registry.wait(), REGISTRY_STOP_TIMEOUT_S)
            except TimeoutError:
                self.registry.kill()
                await self.registry.wait()

    def summary(self) -> None:
        f = self.facts
        rate = f.served_bytes / f.import_seconds if f.import_seconds else 0.0
        rows = [
            ("import", f"{mib(f.served_bytes)} qcow2 over HTTP -> raw volume {DV_NAME}"),
            ("", f"{f.import_seconds:.1f} s, {mib(rate)}/s, sha256 verified"),
            ("VM", f"{VM_NAME}: {f.vm_state}; guest ready {f.boot_seconds:.1f} s after apply"),
            ("accelerator", f.accelerator),
            ("registry", f.registry_ref),
            ("digest", f.registry_digest),
            ("layers", ", ".join(mib(s) for s in f.layer_sizes) or "-"),
            ("pulled back", "identical" if f.pulled_match else "-"),
        ]
        self.out.step("summary")
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"          {key:<{width}}  {value}")
