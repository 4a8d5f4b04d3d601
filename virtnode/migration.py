"""Live migration between two node agents.

Source agent (``PUT .../{name}/migrate``, body ``{"targetAgent": URL,
"blockMigration": bool, "maxBandwidth": bytes/s, "downtimeLimitMs": ms}``):

1. asks the target agent to prepare (``POST /v1/migrations/targets``): the target
   starts QEMU with the same VMI under ``-incoming defer``, creates empty volumes for
   disks it will receive, exports them over NBD and answers with the migration URI;
2. mirrors disks the target cannot see (``blockdev-add`` nbd node +
   ``blockdev-mirror`` in write-blocking mode) until they are in sync: every disk in
   block mode, only ephemeral writable ones (emptyDisk) with shared storage;
3. ``migrate`` with the bandwidth/downtime settings, waits for the ``MIGRATION``
   event, reads ``query-migrate`` (total time, downtime, bytes);
4. ends the mirrors (``block-job-cancel`` on a ready job flushes and keeps the copy)
   and tells the target to finish (``PUT .../{name}/finishmigration``: NBD export
   stopped, ``cont``), then quits its own QEMU (phase ``Succeeded``, reason ``Migrated``).

On failure the source cancels, removes what it added, deletes the target's VMI and
keeps running. The design only needs both agents to reach each other's API and the
target's migration/NBD ports, so it works across hosts (``address`` setting).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from containerdisk import ContainerDiskError, Reference
from virtnode.blockdev import AttachedDisk
from virtnode.disks import qemu_img, volume_path
from virtnode.errors import (
    DiskError,
    MigrationError,
    QmpError,
    SpecError,
    VirtnodeError,
    VmStateError,
)
from virtnode.qmp import QmpEvent
from virtnode.spec import parse_vmi
from virtnode.vm import VirtualMachine
from virtnode.vmtypes import Phase

if TYPE_CHECKING:
    from virtnode.agent import NodeAgent

#: How long one call to the other agent's API may take (seconds); migration itself
#: is bounded by ``AgentSettings.migration_timeout``.
AGENT_CALL_TIMEOUT = 60.0
SHARED_KINDS = ("persistentVolumeClaim", "dataVolume")


def _kind(vm: VirtualMachine, name: str) -> str:
    return vm.spec.volume(name).kind if name not in vm.hotplugged else "persistentVolumeClaim"


def disks_to_copy(vm: VirtualMachine, block: bool) -> list[AttachedDisk]:
    out = []
    for name, attached in vm.disks.items():
        if attached.readonly:
            continue  # cloud-init ISOs are rebuilt identically on the target
        kind = _kind(vm, name)
        if kind == "containerDisk" and name in vm.snapshots:
            raise MigrationError(
                f"VM {vm.key}: containerDisk {name!r} has an active snapshot; commit it first"
            )
        if block or kind not in SHARED_KINDS:
            out.append(attached)
    return out


async def pinned_vmi(vm: VirtualMachine) -> dict[str, Any]:
    """The VMI for the target with every containerDisk image pinned to the digest this
    node runs, so the target builds its overlay on the very same image (a moved tag
    would otherwise give it a different base under the copied overlay)."""
    obj = {k: v for k, v in vm.obj.items() if k != "status"}
    volumes = []
    for volume in obj.get("spec", {}).get("volumes", []):
        name = volume.get("name")
        if "containerDisk" in volume and name in vm.disks:
            image = str(volume["containerDisk"]["image"])
            digest = await _overlay_base_digest(vm, vm.disks[name])
            try:
                pinned = str(Reference.parse(image).with_digest(digest))
            except ContainerDiskError as exc:
                raise MigrationError(f"VM {vm.key}: containerDisk {image}: {exc}") from exc
            volume = {**volume, "containerDisk": {**volume["containerDisk"], "image": pinned}}
        volumes.append(volume)
    return {**obj, "spec": {**obj["spec"], "volumes": volumes}}


async def _overlay_base_digest(vm: VirtualMachine, attached: AttachedDisk) -> str:
    """The digest of the cached image under a containerDisk overlay (its cache dir name)."""
    try:
        info = json.loads(await qemu_img("info", "-U", "--output=json", str(attached.path)))
    except DiskError as exc:
        raise MigrationError(
            f"VM {vm.key}: containerDisk {attached.disk.name!r} overlay unreadable: {exc}"
        ) from exc
    backing = Path(str(info.get("full-backing-filename") or info.get("backing-filename", "")))
    algo, _, hexdigest = backing.parent.name.partition("-")
    if not algo or not hexdigest:
        raise MigrationError(
            f"VM {vm.key}: containerDisk {attached.disk.name!r} overlay has no cached base "
            f"image (backing file {backing})"
        )
    return f"{algo}:{hexdigest}"


def _nbd_node(attached: AttachedDisk) -> str:
    return "mig" + hashlib.sha256(attached.disk.name.encode()).hexdigest()[:16]


async def migrate(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    vm.require_running("migrate")
    if vm.ctx.driver.name != "qemu":
        raise MigrationError(
            f"VM {vm.key} runs under the {vm.ctx.driver.name} driver; live migration needs "
            "the qemu driver on both nodes"
        )
    target = body.get("targetAgent")
    if not isinstance(target, str) or not target.startswith(("http://", "https://")):
        raise SpecError("migrate needs targetAgent, the target node agent's URL")
    block = bool(body.get("blockMigration", False))
    copy = disks_to_copy(vm, block)
    request = {
        "vmi": await pinned_vmi(vm),
        "receive": {a.disk.name: a.path.stat().st_size for a in copy if a.format == "raw"},
        "receiveDisks": [a.disk.name for a in copy],
        "blockMigration": block,
    }
    async with (
        vm.lock,
        aiohttp.ClientSession() as http,
    ):
        vm.extra["migrationState"] = {"role": "source", "targetAgent": target, "mode": _mode(block)}
        vm.extra["migrating"] = True
        try:
            # The target may pull a containerDisk image first: bounded like the migration.
            prepared = await _call(
                http,
                "POST",
                f"{target}/v1/migrations/targets",
                request,
                limit=vm.settings.migration_timeout,
            )
            try:
                stats = await _hand_over(vm, http, target, prepared, copy, body)
            except BaseException:
                with contextlib.suppress(MigrationError, aiohttp.ClientError):
                    url = _target_vm_url(target, vm) + "?gracePeriodSeconds=0"
                    await _call(http, "DELETE", url)
                raise
        except BaseException:
            vm.extra.pop("migrating", None)
            vm.extra["migrationState"] = {**vm.extra["migrationState"], "failed": True}
            vm.ctx.record_migration("failed", {})
            raise
    vm.extra.pop("migrating", None)
    vm.extra["migrationState"] = {**vm.extra["migrationState"], **stats, "completed": True}
    vm.ctx.record_migration("succeeded", stats)
    with contextlib.suppress(QmpError):
        await vm.execute("quit")
    await vm.wait_finished(vm.settings.quit_timeout)
    return stats


async def _hand_over(
    vm: VirtualMachine,
    http: aiohttp.ClientSession,
    target: str,
    prepared: dict[str, Any],
    copy: list[AttachedDisk],
    body: dict[str, Any],
) -> dict[str, Any]:
    """Mirror, migrate, let the target run; adds the guest-visible pause to the stats."""
    stopped: list[float] = []

    def on_stop(event: QmpEvent) -> None:
        if event.name == "STOP":
            stopped.append(event.timestamp)

    vm.event_waiters.append(on_stop)
    try:
        stats = await _run(vm, prepared, copy, body)
    finally:
        vm.event_waiters.remove(on_stop)
    url = _target_vm_url(target, vm) + "/finishmigration"
    resumed = (await _call(http, "PUT", url, {}))["result"]["resumedAt"]
    if stopped:
        # Source vCPUs stopped -> target continued; both clocks are this host's here,
        # across hosts this needs synced clocks (QEMU's own downtimeMs does not).
        stats["switchoverMs"] = round((resumed - stopped[-1]) * 1000, 1)
    return stats


def _mode(block: bool) -> str:
    return "BlockMigration" if block else "LiveMigration"


def _target_vm_url(target: str, vm: VirtualMachine) -> str:
    return f"{target}/v1/namespaces/{vm.spec.namespace}/vmis/{vm.spec.name}"


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    limit: float = AGENT_CALL_TIMEOUT,
) -> Any:
    timeout = aiohttp.ClientTimeout(total=limit)
    try:
        async with http.request(method, url, json=body, timeout=timeout) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise MigrationError(f"target agent refused {method} {url}: {data.get('message')}")
            return data
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MigrationError(f"target agent {url} did not answer: {exc}") from exc


async def _run(
    vm: VirtualMachine, prepared: dict[str, Any], copy: list[AttachedDisk], body: dict[str, Any]
) -> dict[str, Any]:
    jobs: list[tuple[str, str]] = []
    try:
        for attached in copy:
            # A containerDisk's base image is on the target already: copy the overlay only.
            sync = "top" if _kind(vm, attached.disk.name) == "containerDisk" else "full"
            jobs.append(await _start_mirror(vm, attached, prepared["nbd"], sync))
        limits = await _set_parameters(vm, body)
        info, wall = await _migrate_ram(vm, str(prepared["migrationUri"]))
        while jobs:
            await _end_mirror(vm, jobs[0])
            jobs.pop(0)
    finally:
        for job_id, node in jobs:  # only left on failure
            with contextlib.suppress(VirtnodeError):
                await vm.execute("block-job-cancel", {"device": job_id, "force": True})
            with contextlib.suppress(VirtnodeError):
                await vm.execute("blockdev-del", {"node-name": node})
    ram = info.get("ram", {})
    return {
        "totalTimeMs": info.get("total-time") or round(wall * 1000),
        "downtimeMs": info.get("downtime"),
        "setupTimeMs": info.get("setup-time"),
        "transferredBytes": ram.get("transferred"),
        "ramTotalBytes": ram.get("total"),
        "dirtySyncCount": ram.get("dirty-sync-count"),
        "dirtyPagesRate": ram.get("dirty-pages-rate"),
        "mirroredDisks": [a.disk.name for a in copy],
        **limits,
    }


async def _set_parameters(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, int]:
    """Migration events on; bandwidth and downtime limits from the request or settings."""
    settings = vm.settings
    bandwidth = int(body.get("maxBandwidth", settings.migration_max_bandwidth))
    downtime = int(body.get("downtimeLimitMs", settings.migration_downtime_limit_ms))
    caps = [{"capability": "events", "state": True}]
    await vm.execute("migrate-set-capabilities", {"capabilities": caps})
    await vm.execute(
        "migrate-set-parameters", {"max-bandwidth": bandwidth, "downtime-limit": downtime}
    )
    return {"bandwidthLimit": bandwidth, "downtimeLimitMs": downtime}


async def _migrate_ram(vm: VirtualMachine, uri: str) -> tuple[dict[str, Any], float]:
    """``migrate`` and wait for the end; returns ``query-migrate`` and the wall time."""
    limit = vm.settings.migration_timeout

    def finished(event: QmpEvent) -> bool:
        status = event.data.get("status")
        return event.name == "MIGRATION" and status in ("completed", "failed", "cancelled")

    started = time.monotonic()
    try:
        event = await vm.wait_event(finished, limit, lambda: vm.execute("migrate", {"uri": uri}))
    except TimeoutError as exc:
        with contextlib.suppress(QmpError):
            await vm.execute("migrate_cancel")
        raise MigrationError(f"migration of VM {vm.key} did not finish in {limit:g} s") from exc
    wall = time.monotonic() - started
    info: dict[str, Any] = await vm.execute("query-migrate")
    if event.data.get("status") != "completed":
        raise MigrationError(
            f"migration of VM {vm.key} ended {event.data.get('status')}: "
            f"{info.get('error-desc', 'no detail')}"
        )
    return info, wall


async def _start_mirror(
    vm: VirtualMachine, attached: AttachedDisk, nbd: dict[str, Any], sync: str
) -> tuple[str, str]:
    node = _nbd_node(attached)
    server = {"type": "inet", "host": str(nbd["host"]), "port": str(nbd["port"])}
    await vm.execute(
        "blockdev-add",
        {"driver": "nbd", "node-name": node, "server": server, "export": attached.disk.name},
    )
    job = "mig-" + attached.node_name
    source = vm.snapshots.get(attached.disk.name, {}).get("node", attached.node_name)

    def ready(event: QmpEvent) -> bool:
        return event.name == "BLOCK_JOB_READY" and event.data.get("device") == job

    args = {"job-id": job, "device": source, "target": node, "sync": sync}
    try:
        await vm.wait_event(
            ready,
            vm.settings.block_job_timeout,
            lambda: vm.execute("blockdev-mirror", {**args, "copy-mode": "write-blocking"}),
        )
    except TimeoutError as exc:
        raise MigrationError(f"disk {attached.disk.name!r} of VM {vm.key} never synced") from exc
    return job, node


async def _end_mirror(vm: VirtualMachine, job: tuple[str, str]) -> None:
    job_id, node = job

    def gone(event: QmpEvent) -> bool:
        return event.name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and (
            event.data.get("device") == job_id
        )

    await vm.wait_event(
        gone,
        vm.settings.block_job_timeout,
        lambda: vm.execute("block-job-cancel", {"device": job_id}),
    )
    await vm.execute("blockdev-del", {"node-name": node})


async def finish_migration(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    """Target side: stop the NBD export and run the guest."""
    if vm.phase is not Phase.SCHEDULED:
        raise VmStateError(f"VM {vm.key} is {vm.phase.value}, not a migration target")
    ends = ("completed", "failed", "cancelled")

    def ended(event: QmpEvent) -> bool:
        return event.name == "MIGRATION" and event.data.get("status") in ends

    try:
        await vm.wait_until(
            ended,
            AGENT_CALL_TIMEOUT / 2,
            lambda: vm.execute("query-migrate"),
            lambda info: info.get("status") in ends,
        )
    except TimeoutError as exc:
        raise MigrationError(f"incoming migration of VM {vm.key} did not end") from exc
    info = await vm.execute("query-migrate")
    if info.get("status") != "completed":
        raise MigrationError(f"incoming migration of VM {vm.key} is {info.get('status')}")
    if vm.extra.get("migrationState", {}).get("nbd"):
        await vm.execute("nbd-server-stop")
    await vm.finish_incoming()
    vm.extra["migrationState"] = {**vm.extra.get("migrationState", {}), "completed": True}
    return {"resumedAt": time.time()}


MIGRATION_ACTIONS = {"migrate": migrate, "finishmigration": finish_migration}


async def prepare_target(agent: NodeAgent, request: dict[str, Any]) -> dict[str, Any]:
    """Target side: start the VMI as ``-incoming defer``, export disks to receive over NBD."""
    obj = request.get("vmi")
    if not isinstance(obj, dict):
        raise SpecError("a migration target request needs the VMI object")
    spec = parse_vmi(obj)
    receive = [str(n) for n in request.get("receiveDisks", [])]
    sizes: dict[str, int] = request.get("receive", {})
    for name in receive:
        volume = spec.volume(name)
        if volume.kind in SHARED_KINDS:
            _create_volume(
                volume_path(agent.settings.volumes, spec.namespace, volume.claim_name),
                int(sizes[name]),
            )
    vm = await agent.create(obj, incoming=True)
    try:
        return await _listen(vm, receive)
    except BaseException:
        await agent.delete(spec.namespace, spec.name, 0)
        raise


def _create_volume(path: Path, size: int) -> None:
    if path.exists():
        raise MigrationError(f"block migration target volume {path} exists already; remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as fh:
        fh.truncate(size)


async def _listen(vm: VirtualMachine, receive: list[str]) -> dict[str, Any]:
    address = vm.settings.migration_address
    caps = [{"capability": "events", "state": True}]
    await vm.execute("migrate-set-capabilities", {"capabilities": caps})
    port = _free_port(address)
    await vm.execute("migrate-incoming", {"uri": f"tcp:{address}:{port}"})
    nbd = None
    if receive:
        nbd = {"host": address, "port": _free_port(address)}
        addr = {"type": "inet", "data": {"host": address, "port": str(nbd["port"])}}
        await vm.execute("nbd-server-start", {"addr": addr})
        for name in receive:
            export = {"type": "nbd", "id": f"exp-{name}", "name": name, "writable": True}
            await vm.execute("block-export-add", {**export, "node-name": vm.disks[name].node_name})
    vm.extra["migrationState"] = {"role": "target", "nbd": nbd is not None}
    return {"migrationUri": f"tcp:{address}:{port}", "nbd": nbd}


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
