"""Hostile images are refused and leave nothing behind, outside the target or in it."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from containerdisk import (
    ContainerDiskError,
    DigestMismatch,
    RegistryClient,
    RegistrySettings,
    UnsafeLayer,
)
from tests.containerdisk.conftest import MiB, make_qcow2
from tests.containerdisk.images import Entry, digest_of, image_bodies, make_tar, push_image

pytestmark = pytest.mark.timeout(60)

DISK = b"\x00" * 4096 + b"payload" + b"\x00" * 4089


def assert_nothing_written(root: Path) -> None:
    assert sorted(p.name for p in root.rglob("*")) == ["target"], list(root.rglob("*"))


HOSTILE = {
    "traversal": [Entry("disk/"), Entry("../evil", b"x"), Entry("disk/disk.img", DISK)],
    "absolute": [Entry("/etc/evil", b"x"), Entry("disk/disk.img", DISK)],
    "two-disks": [Entry("disk/a.img", DISK), Entry("disk/b.img", DISK)],
    "symlink-out": [
        Entry("disk/"),
        Entry("disk/link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd"),
        Entry("disk/disk.img", DISK),
    ],
    "disk-is-symlink": [Entry("disk/disk.img", kind=tarfile.SYMTYPE, linkname="x.img")],
    "hardlink-out": [
        Entry("disk/disk.img", DISK),
        Entry("y", kind=tarfile.LNKTYPE, linkname="../etc/shadow"),
    ],
    "device": [Entry("dev/null", kind=tarfile.CHRTYPE), Entry("disk/disk.img", DISK)],
    "no-disk": [Entry("other/file.img", DISK)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE), ids=sorted(HOSTILE))
async def test_hostile_layer_is_refused(registry, tmp_path: Path, case: str) -> None:
    await push_image(registry.url, f"hostile/{case}", "v1", make_tar(HOSTILE[case]))
    (tmp_path / "target").mkdir()
    async with RegistryClient() as client:
        with pytest.raises(UnsafeLayer):
            await client.pull_disk(
                f"{registry.host}/hostile/{case}:v1", tmp_path / "target" / "disk.img"
            )
    assert_nothing_written(tmp_path)


async def test_oversized_metadata_header_is_refused(registry, tmp_path: Path) -> None:
    long_name = "disk/" + "a" * (2 * MiB)
    layer = make_tar([Entry(long_name, DISK)])
    await push_image(registry.url, "hostile/longname", "v1", layer)
    (tmp_path / "target").mkdir()
    async with RegistryClient() as client:
        with pytest.raises(UnsafeLayer, match="oversized"):
            await client.pull_disk(
                f"{registry.host}/hostile/longname:v1", tmp_path / "target" / "disk.img"
            )
    assert_nothing_written(tmp_path)


async def test_qcow2_with_backing_file_is_refused(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    base = raw_disk(1 * MiB)
    overlay = make_qcow2(base, tmp_path / "overlay.qcow2", backing=base).read_bytes()
    base.unlink()
    await push_image(
        registry.url,
        "hostile/backing",
        "v1",
        make_tar([Entry("disk/"), Entry("disk/disk.img", overlay)]),
    )
    (tmp_path / "overlay.qcow2").unlink()
    (tmp_path / "target").mkdir()
    async with RegistryClient() as client:
        with pytest.raises(UnsafeLayer, match="backing file"):
            await client.pull_disk(
                f"{registry.host}/hostile/backing:v1", tmp_path / "target" / "disk.img"
            )
        async with client.open_disk(f"{registry.host}/hostile/backing:v1") as disk:
            with pytest.raises(UnsafeLayer, match="backing file"):
                async for _ in disk.chunks():
                    pass
    assert_nothing_written(tmp_path)


def lying_registry(layer: bytes, *, bad_layer: bool = False, bad_manifest: bool = False):
    """A registry that speaks the protocol but serves content not matching its digests."""
    config, manifest = image_bodies(make_tar([Entry("disk/disk.img", DISK)]))
    good_layer = make_tar([Entry("disk/disk.img", DISK)])
    blobs = {digest_of(config): config, digest_of(good_layer): layer if bad_layer else good_layer}

    async def v2(_: web.Request) -> web.Response:
        return web.json_response({})

    async def manifests(request: web.Request) -> web.Response:
        body = manifest + (b" " if bad_manifest else b"")
        headers = {"Docker-Content-Digest": digest_of(manifest)}
        return web.Response(
            body=body, headers=headers, content_type="application/vnd.oci.image.manifest.v1+json"
        )

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=blobs[request.match_info["digest"]])

    app = web.Application()
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/evil/img/manifests/{ref}", manifests)
    app.router.add_get("/v2/evil/img/blobs/{digest}", blob)
    return app


@pytest.mark.parametrize("which", ["manifest", "layer"])
async def test_digest_mismatch_is_refused(aiohttp_server, tmp_path: Path, which: str) -> None:
    tampered = make_tar([Entry("disk/disk.img", DISK[:-1] + b"!")])
    server = await aiohttp_server(
        lying_registry(tampered, bad_layer=which == "layer", bad_manifest=which == "manifest")
    )
    host = f"127.0.0.1:{server.port}"
    (tmp_path / "target").mkdir()
    async with RegistryClient() as client:
        with pytest.raises(DigestMismatch):
            await client.pull_disk(f"{host}/evil/img:v1", tmp_path / "target" / "disk.img")
        if which == "layer":
            # A stream consumer gets the bytes, then the error at the end of the blob.
            async with client.open_disk(f"{host}/evil/img:v1") as disk:
                with pytest.raises(DigestMismatch):
                    async for _ in disk.chunks():
                        pass
    assert_nothing_written(tmp_path)


async def test_pinned_manifest_digest_must_match(aiohttp_server, tmp_path: Path) -> None:
    server = await aiohttp_server(lying_registry(b""))
    wrong = "sha256:" + "0" * 64
    async with RegistryClient() as client:
        with pytest.raises(ContainerDiskError):
            await client.resolve(f"127.0.0.1:{server.port}/evil/img@{wrong}")


async def test_artifact_segment_lying_about_its_size_is_refused(registry, tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(os.urandom(3 * MiB))
    ref = f"{registry.host}/hostile/segments:v1"
    async with RegistryClient(settings=RegistrySettings(segment_size=1 * MiB)) as client:
        pushed = await client.push_disk(disk, ref, format="artifact", compression="none")
        manifest = json.loads(await manifest_body(registry.url, pushed.manifest_digest))
    manifest["layers"][1]["annotations"]["io.diskplane.segment.size"] = str(MiB - 1)
    manifest["layers"][2]["annotations"]["io.diskplane.segment.offset"] = str(2 * MiB - 1)
    body = json.dumps(manifest).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{registry.url}/v2/hostile/segments/manifests/bad",
            data=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ) as resp,
    ):
        assert resp.status == 201
    (tmp_path / "target").mkdir()
    disk.unlink()
    async with RegistryClient() as client:
        with pytest.raises(UnsafeLayer, match="segment 1"):
            await client.pull_disk(
                f"{registry.host}/hostile/segments:bad", tmp_path / "target" / "disk.img"
            )
    assert_nothing_written(tmp_path)


async def manifest_body(url: str, digest: str) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v2/hostile/segments/manifests/{digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ) as resp,
    ):
        return await resp.read()
