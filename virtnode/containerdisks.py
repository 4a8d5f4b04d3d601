"""The node's containerDisk cache: each image digest pulled once, shared read-only by VMs.

``<data_dir>/cache/containerdisks/<algo>-<hex>/disk.img`` (mode 0444) plus
``format`` (``raw``/``qcow2``). A reference with a tag is resolved to its digest
first (one manifest request; KubeVirt's ``IfNotPresent`` for pinned references skips
even that); concurrent VMs asking for the same digest wait for one pull. VMs get a
qcow2 overlay on top (see :mod:`virtnode.disks`), so the cached file never changes.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

from containerdisk import ContainerDiskError, Reference, RegistryClient
from virtnode.blockdev import Format
from virtnode.disks import qemu_img
from virtnode.errors import DiskError

ClientFactory = Callable[[], RegistryClient]


class NodeDiskCache:
    def __init__(self, root: Path, client_factory: ClientFactory = RegistryClient) -> None:
        self.root = root
        self._client_factory = client_factory
        self._locks: dict[str, asyncio.Lock] = {}
        #: Pulls done by this process (a cache hit does not count).
        self.pulls = 0

    async def fetch(self, image: str) -> tuple[Path, Format]:
        """The cached disk for ``image`` and its format, pulling it if this node lacks it."""
        try:
            ref = Reference.parse(image)
            async with self._client_factory() as client:
                digest = ref.digest or (await client.resolve(ref)).manifest_digest
                entry = self.root / digest.replace(":", "-")
                lock = self._locks.setdefault(digest, asyncio.Lock())
                async with lock:
                    if not (entry / "format").is_file():
                        await self._pull(client, ref.with_digest(digest), entry)
        except ContainerDiskError as exc:
            raise DiskError(f"containerDisk {image} could not be pulled: {exc}") from exc
        fmt = (entry / "format").read_text().strip()
        if fmt not in ("raw", "qcow2"):
            raise DiskError(f"containerDisk cache entry {entry} has an unknown format {fmt!r}")
        return entry / "disk.img", "qcow2" if fmt == "qcow2" else "raw"

    async def _pull(self, client: RegistryClient, ref: Reference, entry: Path) -> None:
        await asyncio.to_thread(_make_entry, entry)
        disk = entry / "disk.img"
        await client.pull_disk(ref, disk)
        info = json.loads(await qemu_img("info", "--output=json", str(disk)))
        fmt = str(info.get("format"))
        if fmt not in ("raw", "qcow2") or info.get("backing-filename"):
            disk.unlink()
            raise DiskError(f"containerDisk {ref} holds a {fmt} disk; only raw or qcow2 work")
        os.chmod(disk, 0o444)
        (entry / "format").write_text(fmt + "\n")  # written last: marks the entry complete
        self.pulls += 1


def _make_entry(entry: Path) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    entry.chmod(0o755)  # QEMU's user reads the disk; nobody writes it
