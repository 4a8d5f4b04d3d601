"""Volume operations on a running VM: hotplug, unplug, resize, snapshot, commit, mirror.

Each action takes the VM and the request body (JSON object) and returns a
small JSON-able result. Bodies follow KubeVirt where it has a shape:
``addvolume`` takes ``{"name", "disk", "volumeSource": {persistentVolumeClaim|dataVolume}}``
(``AddVolumeOptions``), ``removevolume`` takes ``{"name"}``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from virtnode.blockdev import AttachedDisk, device, file_node, format_node
from virtnode.disks import DiskPreparer, qemu_img, volume_path
from virtnode.errors import DiskError, QmpError, SpecError, VmStateError
from virtnode.ownership import grant
from virtnode.qmp import QmpEvent
from virtnode.spec import parse_disk, parse_quantity, parse_volume
from virtnode.vm import VirtualMachine

Action = Callable[[VirtualMachine, dict[str, Any]], Awaitable[Any]]


def _attached(vm: VirtualMachine, body: dict[str, Any]) -> AttachedDisk:
    name = body.get("name")
    if not isinstance(name, str) or name not in vm.disks:
        raise SpecError(f"VM {vm.key} has no disk named {name!r}")
    return vm.disks[name]


async def add_volume(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    vm.require_running("hotplug a volume into")
    name = body.get("name")
    source = body.get("volumeSource")
    if not isinstance(source, dict) or not (set(source) <= {"persistentVolumeClaim", "dataVolume"}):
        raise SpecError("addvolume needs volumeSource.persistentVolumeClaim or .dataVolume")
    volume = parse_volume({"name": name, **source})
    disk = parse_disk(body.get("disk") or {"name": volume.name})
    if disk.name != volume.name:
        raise SpecError(f"addvolume: disk name {disk.name!r} differs from {volume.name!r}")
    if disk.name in vm.disks:
        raise VmStateError(f"VM {vm.key} already has a disk named {disk.name!r}")
    if disk.bus != "virtio" or disk.kind != "disk":
        raise SpecError(f"hotplugged disk {disk.name!r} must be a virtio disk")
    async with vm.lock:
        port = _free_port(vm)
        preparer = DiskPreparer(vm.settings.volumes, vm.run, vm.ctx.run_as)
        attached = await preparer.prepare(vm.spec, disk, volume, port=port)
        await _plug(vm, attached)
        vm.disks[disk.name] = attached
        vm.hotplugged[disk.name] = {
            "disk": body.get("disk") or {"name": volume.name},
            "volume": {"name": volume.name, **source},
        }
        vm.save_state()
    return {"name": disk.name, "target": attached.device_id, "port": port}


async def _plug(vm: VirtualMachine, attached: AttachedDisk) -> None:
    if vm.ctx.driver.manages_devices:  # libvirt: keep its domain XML true
        await vm.ctx.driver.attach_disk(vm.spec, attached)
        return
    await _add_nodes(vm, attached)
    try:
        await vm.execute("device_add", device(attached))
    except QmpError:
        await _del_nodes(vm, attached)
        raise


def _unplug_request(vm: VirtualMachine, attached: AttachedDisk) -> Awaitable[Any]:
    if vm.ctx.driver.manages_devices:
        return vm.ctx.driver.detach_disk(vm.spec, attached)
    return vm.execute("device_del", {"id": attached.device_id})


def _free_port(vm: VirtualMachine) -> str:
    used = {a.port for a in vm.disks.values()}
    for index in range(vm.settings.hotplug_ports):
        if f"hp{index}" not in used:
            return f"hp{index}"
    raise VmStateError(
        f"VM {vm.key} has no free hotplug slot; all {vm.settings.hotplug_ports} are used"
    )


async def _add_nodes(vm: VirtualMachine, attached: AttachedDisk) -> None:
    limit = vm.settings.qmp.block
    assert vm.qmp is not None
    await vm.qmp.execute("blockdev-add", file_node(attached), limit=limit)
    try:
        await vm.qmp.execute("blockdev-add", format_node(attached), limit=limit)
    except QmpError:
        await vm.qmp.execute("blockdev-del", {"node-name": attached.file_node_name})
        raise


async def _del_nodes(vm: VirtualMachine, attached: AttachedDisk) -> None:
    for node in (attached.node_name, attached.file_node_name):
        try:
            await vm.execute("blockdev-del", {"node-name": node})
        except QmpError as exc:
            raise DiskError(f"could not release node {node} of VM {vm.key}: {exc}") from exc


async def remove_volume(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    vm.require_running("unplug a volume from")
    attached = _attached(vm, body)
    name = attached.disk.name
    if name not in vm.hotplugged:
        raise VmStateError(f"disk {name!r} of VM {vm.key} was not hotplugged; it stays")
    if name in vm.snapshots:
        raise VmStateError(f"disk {name!r} of VM {vm.key} has a snapshot; commit it first")
    async with vm.lock:

        def deleted(event: QmpEvent) -> bool:
            return event.name == "DEVICE_DELETED" and event.data.get("device") == attached.device_id

        started = time.monotonic()
        try:
            await vm.wait_event(
                deleted,
                vm.settings.unplug_timeout,
                lambda: _unplug_request(vm, attached),
            )
        except TimeoutError as exc:
            raise VmStateError(
                f"the guest of VM {vm.key} did not release disk {name!r} within "
                f"{vm.settings.unplug_timeout:g} s"
            ) from exc
        if not vm.ctx.driver.manages_devices:
            await _del_nodes(vm, attached)
        del vm.disks[name]
        del vm.hotplugged[name]
        vm.save_state()
    return {"name": name, "seconds": round(time.monotonic() - started, 3)}


async def resize(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    """Grow a disk: to ``size`` if given, else to its volume file's current size."""
    vm.require_running("resize a disk of")
    attached = _attached(vm, body)
    if attached.format != "raw" or attached.readonly:
        raise SpecError(f"disk {attached.disk.name!r} is not a writable raw volume")
    if "size" in body:
        size = parse_quantity(body["size"], "resize size")
    else:
        size = os.stat(attached.path).st_size
    async with vm.lock:
        if vm.ctx.driver.manages_devices:  # libvirt: blockResize keeps its view true
            await vm.ctx.driver.resize_disk(vm.spec, attached, size)
        else:
            node = vm.snapshots.get(attached.disk.name, {}).get("node", attached.node_name)
            await vm.execute("block_resize", {"node-name": node, "size": size})
    return {"name": attached.disk.name, "size": size}


async def snapshot(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    """External snapshot: writes go to a new qcow2 next to the volume, the volume freezes."""
    vm.require_running("snapshot")
    attached = _attached(vm, body)
    name = attached.disk.name
    if name in vm.snapshots:
        raise VmStateError(f"disk {name!r} of VM {vm.key} already has an active snapshot")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    overlay = attached.path.parent / f"{attached.path.stem}.snap-{stamp}.qcow2"
    node = f"{attached.node_name}-snap"
    async with vm.lock:
        # The agent creates the overlay (QEMU's user may not write the pool dir).
        size = str(attached.path.stat().st_size)
        base = ["-b", str(attached.path), "-F", attached.format]
        await qemu_img("create", "-q", "-f", "qcow2", "-u", *base, str(overlay), size)
        grant(overlay, vm.ctx.run_as)
        if vm.ctx.driver.manages_devices:  # libvirt: snapshotCreateXML (disk-only, external)
            await vm.ctx.driver.snapshot_disk(vm.spec, attached, overlay)
        else:
            assert vm.qmp is not None
            await vm.qmp.execute(
                "blockdev-snapshot-sync",
                {
                    "node-name": attached.node_name,
                    "snapshot-file": str(overlay),
                    "snapshot-node-name": node,
                    "format": "qcow2",
                    "mode": "existing",
                },
                limit=vm.settings.qmp.block,
            )
        vm.snapshots[name] = {"file": str(overlay), "node": node}
        vm.save_state()
    return {"name": name, "snapshotFile": str(overlay)}


async def commit(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    """Merge the active snapshot back into the volume (active block-commit) and drop it."""
    vm.require_running("commit a snapshot of")
    attached = _attached(vm, body)
    snap = vm.snapshots.get(attached.disk.name)
    if snap is None:
        raise VmStateError(f"disk {attached.disk.name!r} of VM {vm.key} has no active snapshot")
    job = f"commit-{attached.node_name}"
    async with vm.lock:
        driver = vm.ctx.driver
        if driver.manages_devices:  # libvirt: blockCommit (active) + pivot
            seconds = await _run_driver_job(
                vm, job, lambda: driver.start_commit(vm.spec, attached), attached
            )
        else:
            args = {"device": snap["node"], "job-id": job}
            seconds = await _run_job(vm, job, "block-commit", args)
        os.unlink(snap["file"])
        del vm.snapshots[attached.disk.name]
        vm.save_state()
    return {"name": attached.disk.name, "seconds": seconds}


async def mirror(vm: VirtualMachine, body: dict[str, Any]) -> dict[str, Any]:
    """Copy a running disk to another volume (``target.claimName``) and pivot to it."""
    vm.require_running("mirror a disk of")
    attached = _attached(vm, body)
    if attached.disk.name in vm.snapshots:
        raise VmStateError(f"disk {attached.disk.name!r} has a snapshot; commit it first")
    target = body.get("target")
    claim = target.get("claimName") if isinstance(target, dict) else None
    if not isinstance(claim, str):
        raise SpecError("mirror needs target.claimName (a volume in the pool)")
    path = volume_path(vm.settings.volumes, vm.spec.namespace, claim)
    if not path.is_file() or path.stat().st_size < attached.path.stat().st_size:
        raise DiskError(f"mirror target {path} must exist and be at least as large as the disk")
    grant(path, vm.ctx.run_as)
    moved = dataclasses.replace(
        attached, path=path, format="raw", generation=attached.generation + 1
    )
    job = f"mirror-{attached.node_name}"
    async with vm.lock:
        driver = vm.ctx.driver
        if driver.manages_devices:  # libvirt: blockCopy + pivot, its XML follows
            seconds = await _run_driver_job(
                vm, job, lambda: driver.start_copy(vm.spec, attached, path), attached
            )
        else:
            await _add_nodes(vm, moved)
            args = {"job-id": job, "device": attached.node_name, "target": moved.node_name}
            seconds = await _run_job(vm, job, "blockdev-mirror", {**args, "sync": "full"})
            await _del_nodes(vm, attached)
        vm.disks[attached.disk.name] = moved
        vm.save_state()
    return {"name": attached.disk.name, "target": str(path), "seconds": seconds}


async def _run_job(vm: VirtualMachine, job: str, command: str, args: dict[str, Any]) -> float:
    """Start a block job, complete it when ready, wait until it is gone."""
    limit = vm.settings.block_job_timeout
    started = time.monotonic()

    def ready(event: QmpEvent) -> bool:
        return event.name == "BLOCK_JOB_READY" and event.data.get("device") == job

    def done(event: QmpEvent) -> bool:
        return event.name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR") and (
            event.data.get("device") == job
        )

    try:
        await vm.wait_event(ready, limit, lambda: vm.execute(command, args))
        event = await vm.wait_event(done, limit, lambda: vm.execute("job-complete", {"id": job}))
    except TimeoutError as exc:
        raise DiskError(
            f"block job {job} of VM {vm.key} did not finish within {limit:g} s"
        ) from exc
    if event.name == "BLOCK_JOB_ERROR" or event.data.get("error"):
        raise DiskError(f"block job {job} of VM {vm.key} failed: {event.data.get('error')}")
    return round(time.monotonic() - started, 3)


async def _run_driver_job(
    vm: VirtualMachine, job: str, start: Callable[[], Awaitable[None]], attached: AttachedDisk
) -> float:
    """A block job the driver runs (libvirt names it): wait until ready, then pivot.

    vm.lock is held, so the next BLOCK_JOB_READY on this VM is this job's.
    """
    limit = vm.settings.block_job_timeout
    started = time.monotonic()
    try:
        await vm.wait_event(lambda e: e.name == "BLOCK_JOB_READY", limit, start)
    except TimeoutError as exc:
        raise DiskError(f"block job {job} of VM {vm.key} was not ready within {limit:g} s") from exc
    await vm.ctx.driver.pivot(vm.spec, attached)
    return round(time.monotonic() - started, 3)


VOLUME_ACTIONS: dict[str, Action] = {
    "addvolume": add_volume,
    "removevolume": remove_volume,
    "resize": resize,
    "snapshot": snapshot,
    "commit": commit,
    "mirror": mirror,
}
