"""Hand-made images for hostile-pull tests, pushed with plain aiohttp (not our client)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import aiohttp

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o444


def make_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname = e.kind, e.mode, e.linkname
            info.uid = info.gid = 107
            info.size = len(e.data) if e.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if e.kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def image_bodies(layer: bytes, media_type: str = LAYER_TAR) -> tuple[bytes, bytes]:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": media_type, "digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()
    return config, manifest


async def push_image(url: str, repo: str, tag: str, layer: bytes) -> str:
    """Push a one-layer image as any client would; returns the manifest digest."""
    config, manifest = image_bodies(layer)
    async with aiohttp.ClientSession() as session:
        for blob in (layer, config):
            async with session.post(f"{url}/v2/{repo}/blobs/uploads/") as resp:
                assert resp.status == 202, resp.status
                location = resp.headers["Location"]
            async with session.put(
                location, params={"digest": digest_of(blob)}, data=io.BytesIO(blob)
            ) as resp:
                assert resp.status == 201, await resp.text()
        async with session.put(
            f"{url}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST}
        ) as resp:
            assert resp.status == 201, await resp.text()
    return digest_of(manifest)
