"""skopeo is the peer: it reads what we push, and we pull what it pushes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from containerdisk import OciLayout, Reference, RegistryClient, build_oci_layout
from tests.containerdisk.conftest import MiB, make_qcow2

pytestmark = pytest.mark.timeout(120)


def skopeo(*args: str) -> str:
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def layer_members(layout_dir: Path, tag: str) -> list[tarfile.TarInfo]:
    manifest, _ = OciLayout(layout_dir).manifest(tag)
    (layer,) = manifest.layers
    blob = OciLayout(layout_dir).read_blob(layer.digest)
    data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


async def test_skopeo_reads_our_containerdisk(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    disk = raw_disk(6 * MiB)
    ref = f"{registry.host}/interop/cd:v1"
    async with RegistryClient() as client:
        pushed = await client.push_disk(disk, ref, disk_format="keep")
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == pushed.manifest_digest
    assert info["Architecture"] == "amd64"
    assert info["Labels"]["io.diskplane.disk.format"] == "raw"
    out = tmp_path / "layout"
    skopeo("copy", *registry.skopeo_flags("src"), f"docker://{ref}", f"oci:{out}:v1")
    members = layer_members(out, "v1")
    shape = [(m.name, m.type, oct(m.mode), m.uid, m.gid, m.size) for m in members]
    assert shape == [
        ("disk", tarfile.DIRTYPE, "0o555", 107, 107, 0),
        ("disk/disk.img", tarfile.REGTYPE, "0o444", 107, 107, disk.stat().st_size),
    ]


async def test_skopeo_pushes_our_oci_layout(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    disk = raw_disk(3 * MiB)
    layout = tmp_path / "built"
    digest = await build_oci_layout(disk, layout, tag="v2", disk_format="keep")
    ref = f"{registry.host}/interop/built:v2"
    skopeo(
        "copy",
        "--preserve-digests",
        *registry.skopeo_flags("dest"),
        f"oci:{layout}:v2",
        f"docker://{ref}",
    )
    async with RegistryClient() as client:
        image = await client.resolve(ref)
        assert image.manifest_digest == digest
        pulled = await client.pull_disk(ref, tmp_path / "back.img")
    assert pulled == digest
    assert (tmp_path / "back.img").read_bytes() == disk.read_bytes()


def kubevirt_layout(path: Path, qcow2: bytes) -> None:
    """``FROM scratch`` + ``ADD --chown=107:107 disk.qcow2 /disk/``, uncompressed layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("disk/")
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o755, 107, 107
        tar.addfile(d)
        f = tarfile.TarInfo("disk/disk.qcow2")
        f.size, f.mode, f.uid, f.gid = len(qcow2), 0o644, 107, 107
        tar.addfile(f, io.BytesIO(qcow2))
    layout = OciLayout(path).create()
    layer = buf.getvalue()
    layer_digest = layout.put_bytes(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    from containerdisk import Descriptor, Manifest

    manifest = Manifest(
        Descriptor(
            "application/vnd.oci.image.config.v1+json", layout.put_bytes(config), len(config)
        ),
        (Descriptor("application/vnd.oci.image.layer.v1.tar", layer_digest, len(layer)),),
    )
    layout.tag_manifest(manifest, "latest")


async def test_we_pull_a_kubevirt_style_image_made_by_skopeo(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    qcow2 = make_qcow2(raw_disk(5 * MiB), tmp_path / "src.qcow2").read_bytes()
    kubevirt_layout(tmp_path / "kv", qcow2)
    ref = f"{registry.host}/kubevirt/fedora:latest"
    # skopeo recompresses the uncompressed layer with gzip, as a real push would.
    skopeo(
        "copy", *registry.skopeo_flags("dest"), f"oci:{tmp_path / 'kv'}:latest", f"docker://{ref}"
    )
    async with RegistryClient() as client:
        async with client.open_disk(Reference.parse(f"docker://{ref}")) as disk:
            assert disk.kind == "containerdisk"
            assert disk.size == len(qcow2)
            data = b"".join([c async for c in disk.chunks()])
        assert hashlib.sha256(data).digest() == hashlib.sha256(qcow2).digest()
        await client.pull_disk(ref, tmp_path / "out.qcow2")
    assert (tmp_path / "out.qcow2").read_bytes() == qcow2


async def test_inspect_reads_format_and_virtual_size_of_a_foreign_image(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    qcow2 = make_qcow2(raw_disk(5 * MiB), tmp_path / "src.qcow2").read_bytes()
    kubevirt_layout(tmp_path / "kv", qcow2)
    ref = f"{registry.host}/kubevirt/inspect:latest"
    skopeo(
        "copy", *registry.skopeo_flags("dest"), f"oci:{tmp_path / 'kv'}:latest", f"docker://{ref}"
    )
    async with RegistryClient() as client:
        info = await client.inspect(ref)
    assert info["disk"] == {
        "kind": "containerdisk",
        "mediaType": info["layers"][0]["mediaType"],
        "size": len(qcow2),
        "format": "qcow2",
        "virtualSize": 5 * MiB,
    }
