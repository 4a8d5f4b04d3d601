"""Unit tests of the pure parts: references, OCI objects, codecs, tar framing and reading."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator

import pytest

import containerdisk
from containerdisk import InvalidReference, ManifestError, Platform, PlatformNotFound, Reference
from containerdisk.codecs import compress_block, decompress
from containerdisk.oci import Index, Manifest, parse_manifest
from containerdisk.progress import ProgressDisplay
from containerdisk.registry.auth import Credentials, credentials_from_file, parse_challenge
from containerdisk.tarbuild import disk_tar_head, disk_tar_tail
from containerdisk.tarread import DiskTarReader
from tests.containerdisk.images import Entry, make_tar

# -- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("fedora", "docker.io", "library/fedora", "latest", None),
        (
            "docker://quay.io/containerdisks/fedora:39",
            "quay.io",
            "containerdisks/fedora",
            "39",
            None,
        ),
        ("localhost:5000/a/b", "localhost:5000", "a/b", "latest", None),
        ("127.0.0.1:5000/x:y", "127.0.0.1:5000", "x", "y", None),
        ("user/img:1.0", "docker.io", "user/img", "1.0", None),
        ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
        ("r.io/a@sha256:" + "a" * 64, "r.io", "a", None, "sha256:" + "a" * 64),
        ("r.io/a:t@sha256:" + "b" * 64, "r.io", "a", "t", "sha256:" + "b" * 64),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
    ],
)
def test_reference_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text", ["", "UPPER/case", "r.io/a@sha256:abc", "http://r.io/a", "r.io/a:bad tag", "r.io/../x"]
)
def test_reference_rejects(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


def test_reference_hub_and_locality() -> None:
    assert Reference.parse("alpine").api_host == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/x").is_local
    assert Reference.parse("127.0.0.1:5000/x").is_local
    assert not Reference.parse("127.0.0.2:5000/x").is_local
    assert not Reference.parse("quay.io/x").is_local


# -- OCI objects ---------------------------------------------------------------------------

DOCKER_V2 = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 10,
        "digest": "sha256:" + "1" * 64,
    },
    "layers": [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 20,
            "digest": "sha256:" + "2" * 64,
        }
    ],
}
DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": DOCKER_V2["mediaType"],
            "size": 5,
            "digest": "sha256:" + "3" * 64,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
        {
            "mediaType": DOCKER_V2["mediaType"],
            "size": 5,
            "digest": "sha256:" + "4" * 64,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
    ],
}


def test_docker_schema2_manifest_and_list_parse() -> None:
    manifest = parse_manifest(json.dumps(DOCKER_V2).encode(), None, "m")
    assert isinstance(manifest, Manifest)
    assert manifest.layers[0].size == 20
    index = parse_manifest(json.dumps(DOCKER_LIST).encode(), None, "l")
    assert isinstance(index, Index)
    assert index.select(Platform("linux", "arm64")).digest == "sha256:" + "3" * 64
    assert index.select(Platform.parse("linux/amd64")).digest == "sha256:" + "4" * 64
    with pytest.raises(PlatformNotFound, match="linux/s390x"):
        index.select(Platform.parse("linux/s390x"))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"schemaVersion": 1}',
        json.dumps({**DOCKER_V2, "layers": "x"}).encode(),
        json.dumps(
            {**DOCKER_V2, "config": {"mediaType": "x", "size": 1, "digest": "md5:abc"}}
        ).encode(),
    ],
    ids=["not-json", "schema1", "bad-layers", "bad-digest"],
)
def test_malformed_manifests_are_refused(body: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(body, None, "m")


# -- codecs --------------------------------------------------------------------------------


async def _aiter(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_multi_member_streams_decompress_in_bounded_pieces(compression: str) -> None:
    plain = [os.urandom(100_000), bytes(3 * 1024 * 1024), b"tail"]
    blob = b"".join(compress_block(compression, p) for p in plain)  # type: ignore[arg-type]
    pieces = [blob[i : i + 7000] for i in range(0, len(blob), 7000)]
    out = [p async for p in decompress(_aiter(pieces), compression)]  # type: ignore[arg-type]
    assert b"".join(out) == b"".join(plain)
    assert max(len(p) for p in out) <= 1024 * 1024


async def test_corrupt_gzip_is_an_unsafe_layer() -> None:
    blob = bytearray(gzip.compress(os.urandom(50_000)))
    blob[100] ^= 0xFF
    with pytest.raises(containerdisk.UnsafeLayer):
        async for _ in decompress(_aiter([bytes(blob)]), "gzip"):
            pass


async def test_corrupt_zstd_is_an_unsafe_layer() -> None:
    blob = bytearray(compress_block("zstd", os.urandom(50_000)))
    blob[1000] ^= 0xFF
    blob = bytes(blob)
    with pytest.raises(containerdisk.UnsafeLayer):
        async for _ in decompress(_aiter([blob]), "zstd"):
            pass


class _SourceCut(Exception):
    pass


async def _cut_after(
    pieces: list[bytes], gate: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p
    if gate is not None:
        await gate.wait()
    raise _SourceCut


@pytest.mark.parametrize("slow_reader", [False, True], ids=["fast-reader", "slow-reader"])
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_a_failing_source_reports_its_own_error_not_a_truncated_stream(
    compression: str, slow_reader: bool
) -> None:
    # Part of a stream, then the source fails: the caller must see the
    # source's (retryable) error, never the decoder's "stream ends early"
    # (final), and must not wait for ever. A slow reader lets the failure land
    # while pieces are being handed out rather than while a batch is decoded.
    plain = [os.urandom(256 * 1024) + bytes(8 * 1024 * 1024) for _ in range(4)]
    blob = b"".join(compress_block(compression, p) for p in plain)  # type: ignore[arg-type]
    part = [blob[i : i + 65536] for i in range(0, len(blob) * 3 // 4, 65536)]

    async def read_all() -> None:
        async for _ in decompress(_cut_after(part), compression):  # type: ignore[arg-type]
            if slow_reader:
                await asyncio.sleep(0.01)

    for _ in range(3):
        async with asyncio.timeout(30):
            with pytest.raises(_SourceCut):
                await read_all()


_ABANDON = """
import asyncio, os, sys
from containerdisk.codecs import compress_block, decompress

async def source(pieces):
    for p in pieces:
        yield p
    await asyncio.Event().wait()  # a source that stalls for ever

async def main(compression):
    blob = compress_block(compression, os.urandom(2 * 1024 * 1024))
    pieces = [blob[i : i + 65536] for i in range(0, len(blob) // 2, 65536)]

    async def drain():
        async for _ in decompress(source(pieces), compression):
            pass

    reading = asyncio.create_task(drain())
    await asyncio.sleep(0.3)  # all input decoded: the thread waits for more
    assert not reading.done()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_loop_torn_down_mid_stream_leaves_no_thread_waiting(compression: str) -> None:
    # asyncio.run cancels every task before it closes async generators, then
    # joins its executor: a decompress thread still waiting for input would
    # hang it (and the interpreter's exit) for ever. A subprocess, so that a
    # regression fails this test instead of hanging the suite.
    try:
        subprocess.run([sys.executable, "-c", _ABANDON, compression], check=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("asyncio.run did not return: a decompress thread is stuck on its input")


# -- tar -----------------------------------------------------------------------------------


def test_built_tar_is_what_kubevirt_expects() -> None:
    data = os.urandom(1000)
    layer = disk_tar_head(len(data)) + data + disk_tar_tail(len(data))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
        assert [(m.name, oct(m.mode), m.uid, m.gid) for m in members] == [
            ("disk", "0o555", 107, 107),
            ("disk/disk.img", "0o444", 107, 107),
        ]
        extracted = tar.extractfile("disk/disk.img")
        assert extracted is not None
        assert extracted.read() == data


def test_huge_disk_header_uses_pax() -> None:
    size = 20 * 1024**3
    head = disk_tar_head(size)
    with tarfile.open(fileobj=io.BytesIO(head + bytes(512 * 4)), mode="r|") as tar:
        tar.next()
        info = tar.next()
        assert info is not None
        assert info.size == size


async def test_reader_handles_pax_and_gnu_long_names() -> None:
    long_dir = "disk/" if True else ""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x" * 150 + "/other")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
        info = tarfile.TarInfo(long_dir + "d" * 120 + ".img")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    reader = DiskTarReader(_aiter([buf.getvalue()]))
    entry = await reader.find_disk()
    assert entry is not None
    assert entry.size == 5
    assert b"".join([c async for c in reader.disk_chunks()]) == b"hello"
    await reader.finish()
    gnu = make_tar([Entry("disk/" + "g" * 200, b"gnu!")])
    reader = DiskTarReader(_aiter([gnu]))
    entry = await reader.find_disk()
    assert entry is not None
    assert entry.name == "disk/" + "g" * 200


async def test_explicit_disk_path() -> None:
    layer = make_tar([Entry("images/vm.qcow2", b"q"), Entry("disk/other", b"o")])
    reader = DiskTarReader(_aiter([layer]), disk_path="images/vm.qcow2")
    entry = await reader.find_disk()
    assert entry is not None
    assert entry.name == "images/vm.qcow2"


async def test_corrupt_header_checksum_is_refused() -> None:
    layer = bytearray(make_tar([Entry("disk/disk.img", b"abc")]))
    layer[0] ^= 0x01
    with pytest.raises(containerdisk.UnsafeLayer, match="checksum"):
        await DiskTarReader(_aiter([bytes(layer)])).find_disk()


# -- auth helpers --------------------------------------------------------------------------


def test_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.io/token",
        "service": "registry.io",
        "scope": "repository:a:pull",
    }


def test_credentials_never_show_the_secret(tmp_path) -> None:
    creds = Credentials("me", "hunter2", "tok")
    assert "hunter2" not in repr(creds)
    assert "tok" not in repr(creds).replace("token", "")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"username": "u", "password": "p"}}})
    )
    assert credentials_from_file(config, "docker.io") == Credentials("u", "p")
    assert credentials_from_file(config, "quay.io") is None


def test_progress_bar_on_a_terminal() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    display("upload", 50, 100)
    display._started -= 1.0  # as if a second had passed
    display("upload", 100, 100)
    display.finish()
    text = out.getvalue()
    assert "100.0%" in text
    assert "ETA" in text
    assert "/s" in text


def test_public_surface_is_pinned() -> None:
    assert sorted(containerdisk.__all__) == sorted(
        [
            "DISK_ARTIFACT_TYPE",
            "AuthenticationFailed",
            "BuildError",
            "ContainerDiskError",
            "Descriptor",
            "DigestMismatch",
            "Index",
            "InsecureRegistryRefused",
            "InvalidReference",
            "Manifest",
            "ManifestError",
            "NotFound",
            "OciLayout",
            "Platform",
            "PlatformNotFound",
            "PushResult",
            "Reference",
            "RegistryClient",
            "RegistryDisk",
            "RegistryError",
            "RegistrySettings",
            "RegistryUnavailable",
            "ResolvedImage",
            "UnsafeLayer",
            "UploadFailed",
            "build_oci_layout",
            "volume_disk",
        ]
    )


class _TrickleContent:
    """A response body that arrives a few bytes per read, as a body split over TCP reads does."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, n: int = -1) -> bytes:
        piece, self._body = self._body[: min(n, 5)], self._body[min(n, 5) :]
        return piece


class _TrickleResponse:
    def __init__(self, body: bytes) -> None:
        self.content = _TrickleContent(body)


async def test_read_capped_reads_a_split_body_to_its_end() -> None:
    from containerdisk.registry.transport import read_capped

    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    assert await read_capped(_TrickleResponse(body), 1024) == body  # type: ignore[arg-type]
    over = await read_capped(_TrickleResponse(body), 10)  # type: ignore[arg-type]
    assert over == body[:11]  # one byte past the limit tells the caller it is too big
