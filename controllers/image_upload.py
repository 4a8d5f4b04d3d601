"""``diskplane image-upload dv NAME --image-path FILE``: fill an upload DataVolume (virtctl's verb).

The DataVolume (``spec.source.upload``) must have reached ``UploadReady``
under ``diskplane up``: its importer service then holds an upload job for the
volume. The command reads the service's URL from ``<data_dir>/up.json`` (or
``--url``), asks the service for an upload token for exactly that volume,
streams the file (resuming after dropped connections) and, unless
``--no-wait``, follows the DataVolume until ``Succeeded`` or ``Failed``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from cdi.service import ClientError, ImporterClient, VolumeRef
from controllers.api.kinds import DATAVOLUME
from controllers.commands import _common, _run, open_store
from controllers.errors import ControllersError
from controllers.store.protocol import Object, Store

# How long to wait for the DataVolume to become UploadReady, and for the import after.
READY_WAIT_S = 60.0
IMPORT_WAIT_S = 3600.0
# Print a progress line every this many bytes sent.
PROGRESS_STEP = 64 * 1024 * 1024


class UploadFailed(ControllersError):
    """An image upload into a DataVolume could not be done."""


async def wait_dv_phase(
    store: Store, namespace: str, name: str, phases: tuple[str, ...], timeout_s: float
) -> Object:
    """The DataVolume once its phase is one of ``phases`` (watching the store)."""

    async def follow() -> Object:
        listing = await store.list(DATAVOLUME, namespace)
        for item in listing.items:
            if item["metadata"]["name"] == name and _phase(item) in phases:
                return item
        async for event in store.watch(DATAVOLUME, namespace, listing.resource_version):
            obj = event.object
            if obj["metadata"]["name"] == name and _phase(obj) in phases:
                return obj
        raise UploadFailed(f"the watch of DataVolume {namespace}/{name} ended")

    try:
        return await asyncio.wait_for(follow(), timeout_s)
    except TimeoutError as exc:
        wanted = " or ".join(phases)
        raise UploadFailed(
            f"DataVolume {namespace}/{name} did not reach {wanted} within {timeout_s:.0f} s"
        ) from exc


def _phase(obj: Object) -> str:
    return str((obj.get("status") or {}).get("phase", ""))


async def image_upload(args: argparse.Namespace) -> int:
    path: Path = args.image_path
    if not await asyncio.to_thread(path.is_file):
        raise UploadFailed(f"image {path} is not a readable file")
    url = args.url or await asyncio.to_thread(_running_importer, args.data_dir)
    ns, name = args.namespace, args.name
    async with open_store(args) as store:
        dv = await store.get(DATAVOLUME, ns, name)
        if "upload" not in ((dv.get("spec") or {}).get("source") or {}):
            raise UploadFailed(f"DataVolume {ns}/{name} has no spec.source.upload")
        waiting = ("UploadReady", "Succeeded", "Failed")
        phase = _phase(await wait_dv_phase(store, ns, name, waiting, READY_WAIT_S))
        if phase != "UploadReady":
            raise UploadFailed(f"DataVolume {ns}/{name} is {phase}, not UploadReady")
        await _send(url, VolumeRef(ns, name), path)
        if args.no_wait:
            return 0
        final = await wait_dv_phase(store, ns, name, ("Succeeded", "Failed"), IMPORT_WAIT_S)
    if _phase(final) == "Failed":
        ready = [c for c in final["status"].get("conditions", []) if c.get("type") == "Ready"]
        message = ready[0].get("message", "") if ready else ""
        print(f"DataVolume {ns}/{name} failed: {message}")
        return 1
    print(f"DataVolume {ns}/{name} Succeeded")
    return 0


def _running_importer(data_dir: Path) -> str:
    from controllers.up import read_endpoints  # the stack's modules only when needed

    endpoints = read_endpoints(data_dir)
    if endpoints is None:
        raise UploadFailed(f"no `diskplane up` runs on data dir {data_dir}; start it or pass --url")
    return endpoints.importer


async def _send(url: str, volume: VolumeRef, path: Path) -> None:
    marks = {"next": PROGRESS_STEP}

    def progress(sent: int, total: int) -> None:
        if sent >= marks["next"] or sent == total:
            print(f"uploaded {sent}/{total} bytes", flush=True)
            marks["next"] = sent + PROGRESS_STEP

    try:
        async with ImporterClient(url) as client:
            token = await client.upload_token(volume)
            status = await client.upload_file(path, volume, token, on_progress=progress)
    except ClientError as exc:
        raise UploadFailed(f"upload of {path} into {volume} failed: {exc}") from exc
    print(f"{status.bytes_received} bytes received; import {status.phase}", flush=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "image-upload", help="upload a disk image into an upload DataVolume (diskplane up)"
    )
    p.add_argument("kind", choices=("dv",), help="dv: a DataVolume with spec.source.upload")
    p.add_argument("name", help="DataVolume name")
    p.add_argument("--image-path", type=Path, required=True, help="the image file")
    p.add_argument("--url", help="importer service URL (default: from the running diskplane up)")
    p.add_argument("--no-wait", action="store_true", help="return once the bytes are sent")
    _common(p)
    p.set_defaults(handler=_run(image_upload))
