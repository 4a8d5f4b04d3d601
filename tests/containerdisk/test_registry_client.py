"""The registry client against real registries: auth, TLS, insecure, dedup, faults."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from containerdisk import (
    AuthenticationFailed,
    InsecureRegistryRefused,
    RegistryClient,
    RegistryError,
    RegistrySettings,
)
from tests.containerdisk.conftest import MiB

pytestmark = pytest.mark.timeout(120)

SMALL = RegistrySettings(chunk_size=1 * MiB, segment_size=2 * MiB, retry_backoff=0.01)


async def roundtrip(client: RegistryClient, disk: Path, ref: str, out: Path) -> None:
    pushed = await client.push_disk(disk, ref, disk_format="keep")
    assert await client.pull_disk(ref, out) == pushed.manifest_digest
    assert out.read_bytes() == disk.read_bytes()


# -- auth ----------------------------------------------------------------------------------


async def test_wrong_password_gives_a_clear_401_without_the_password(
    registry_auth, raw_disk: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "not-the-right-one-42"
    async with RegistryClient(username=registry_auth.username, password=secret) as client:
        with pytest.raises(AuthenticationFailed) as err:
            await client.push_disk(
                raw_disk(), f"{registry_auth.host}/auth/x:v1", disk_format="keep"
            )
    message = str(err.value)
    assert "401" in message
    assert registry_auth.username in message
    assert secret not in message
    assert secret not in repr(err.value)
    assert secret not in caplog.text
    assert base64.b64encode(f"{registry_auth.username}:{secret}".encode()).decode() not in message


async def test_anonymous_on_an_auth_registry_is_refused(registry_auth) -> None:
    async with RegistryClient(auth_file=Path("/nonexistent")) as client:
        with pytest.raises(AuthenticationFailed, match="anonymously"):
            await client.resolve(f"{registry_auth.host}/auth/x:v1")


async def test_basic_auth_push_and_pull(
    registry_auth, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    async with RegistryClient(
        username=registry_auth.username, password=registry_auth.password, settings=SMALL
    ) as client:
        await roundtrip(
            client, raw_disk(5 * MiB), f"{registry_auth.host}/auth/ok:v1", tmp_path / "out.img"
        )
    # Credentials go out pre-emptively once the scheme is known: the big PATCHes are
    # never answered 401 (oras-py's failure mode).
    patches = [r for r in registry_auth.requests() if r.method == "PATCH"]
    assert patches
    assert all(r.status == 202 for r in patches)


async def test_credentials_from_a_docker_config_file(
    registry_auth, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    token = base64.b64encode(f"{registry_auth.username}:{registry_auth.password}".encode())
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {registry_auth.host: {"auth": token.decode()}}}))
    async with RegistryClient(auth_file=config) as client:
        await roundtrip(
            client, raw_disk(), f"{registry_auth.host}/auth/file:v1", tmp_path / "out.img"
        )


# -- TLS and insecure ----------------------------------------------------------------------


async def test_tls_with_the_ca_file(
    registry_tls, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    async with RegistryClient(ca_file=registry_tls.ca_file) as client:
        await roundtrip(client, raw_disk(), f"{registry_tls.host}/tls/x:v1", tmp_path / "o.img")


async def test_tls_without_the_ca_is_refused_unless_insecure(registry_tls) -> None:
    ref = f"{registry_tls.host}/tls/none:v1"
    async with RegistryClient() as client:
        with pytest.raises(RegistryError, match="not trusted"):
            await client.resolve(ref)
    async with RegistryClient(insecure=True) as client:
        with pytest.raises(RegistryError, match="404"):  # reached it; the image is absent
            await client.resolve(ref)


@pytest.fixture
async def plain_registry_on_127_0_0_2(registry) -> AsyncIterator[str]:
    """The plain registry reached through 127.0.0.2, a non-localhost name for our rule."""
    upstream_port = int(registry.host.rsplit(":", 1)[1])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    pipes: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pipe(a, b), name="test-forward-pipe")
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(handle, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.2:{port}"
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def test_plain_http_needs_insecure_for_a_non_local_registry(
    plain_registry_on_127_0_0_2: str, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    host = plain_registry_on_127_0_0_2
    async with RegistryClient() as client:
        with pytest.raises(InsecureRegistryRefused, match="--insecure"):
            await client.resolve(f"{host}/plain/x:v1")
    async with RegistryClient(insecure=True) as client:
        await roundtrip(client, raw_disk(), f"{host}/plain/x:v1", tmp_path / "o.img")


# -- segments and dedup --------------------------------------------------------------------


def manifest_put(tag: str) -> Callable[[Any], bool]:
    return lambda r: r.method == "PUT" and r.path.endswith(f"/manifests/{tag}")


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_repush_of_a_changed_disk_uploads_only_changed_segments(
    registry, raw_disk: Callable[..., Path], tmp_path: Path, compression: str
) -> None:
    disk = raw_disk(8 * MiB, dense_fraction=1.0)  # 4 segments of 2 MiB
    ref = f"{registry.host}/seg/disk:v1"
    async with RegistryClient(settings=SMALL) as client:
        first = await client.push_disk(disk, ref, format="artifact", compression=compression)
        assert (first.uploaded_blobs, len(first.layers)) == (5, 4)  # 4 segments + config
        with disk.open("r+b") as f:  # change one byte in segment 2
            f.seek(5 * MiB + 17)
            f.write(b"\xff")
        # The access log is written after each answer: wait for the push's last request.
        await asyncio.to_thread(registry.wait_for_request, manifest_put("v1"))
        before = len(registry.blob_uploads("seg/disk"))
        second = await client.push_disk(
            disk, f"{registry.host}/seg/disk:v2", format="artifact", compression=compression
        )
        assert (second.uploaded_blobs, second.skipped_blobs) == (1, 4)
        await asyncio.to_thread(registry.wait_for_request, manifest_put("v2"))
        uploads = registry.blob_uploads("seg/disk")[before:]
        assert [r.method for r in uploads] == ["POST", "PUT"]  # one segment, nothing else
        out = tmp_path / "v2.img"
        await client.pull_disk(f"{registry.host}/seg/disk:v2", out)
        assert out.read_bytes() == disk.read_bytes()
        async with client.open_disk(f"{registry.host}/seg/disk:v2") as opened:
            assert opened.size == 8 * MiB
            assert opened.supports_ranges == (compression == "none")
            if opened.supports_ranges:
                got = await opened.read_range(2 * MiB - 10, 20)
                assert got == disk.read_bytes()[2 * MiB - 10 : 2 * MiB + 10]


async def test_cross_repository_mount(registry, raw_disk: Callable[..., Path]) -> None:
    disk = raw_disk(4 * MiB, dense_fraction=1.0)
    async with RegistryClient(settings=SMALL) as client:
        await client.push_disk(disk, f"{registry.host}/mount/a:v1", format="artifact")
        second = await client.push_disk(
            disk, f"{registry.host}/mount/b:v1", format="artifact", mount_from=["mount/a"]
        )
    assert second.mounted_blobs == 2
    assert second.uploaded_bytes == 0


# -- faults --------------------------------------------------------------------------------

UPLOADS = r"/blobs/uploads/"


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT"])
async def test_503_twice_then_ok_the_push_completes(
    registry_faulty, raw_disk: Callable[..., Path], tmp_path: Path, method: str
) -> None:
    registry_faulty.set_faults(method, UPLOADS, status=503, times=2)
    async with RegistryClient(settings=SMALL) as client:
        await roundtrip(
            client, raw_disk(3 * MiB), f"{registry_faulty.host}/faults/x:v1", tmp_path / "o.img"
        )
    assert len([r for r in registry_faulty.log if r.fault == "status"]) == 2


async def test_patch_refused_with_503_resumes_at_the_registry_offset(
    registry_faulty, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    registry_faulty.set_faults("PATCH", UPLOADS, status=503, times=1)
    async with RegistryClient(settings=SMALL) as client:
        await roundtrip(
            client,
            raw_disk(4 * MiB, dense_fraction=1.0),
            f"{registry_faulty.host}/faults/resume:v1",
            tmp_path / "o.img",
        )
    requests = registry_faulty.requests()
    posts = [r for r in requests if r.method == "POST" and UPLOADS in r.path]
    statuses = [r for r in requests if r.method == "GET" and UPLOADS in r.path]
    assert len(posts) == 2  # the layer (one session, resumed) and the config
    assert statuses
    assert statuses[0].status == 204


async def test_interrupted_chunked_upload_still_completes(
    registry_faulty, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    # distribution 2.8 kills an upload session whose PATCH was cut (see the proxy's own
    # tests); the client asks for the offset, learns the session is dead and restarts
    # the blob from the disk file.
    registry_faulty.drop_request_after("PATCH", UPLOADS, 300_000)
    async with RegistryClient(settings=SMALL) as client:
        await roundtrip(
            client,
            raw_disk(4 * MiB, dense_fraction=1.0),
            f"{registry_faulty.host}/faults/cut:v1",
            tmp_path / "o.img",
        )
    assert [r.fault for r in registry_faulty.log if r.fault] == ["drop_request"]


async def test_cut_download_resumes_with_range(
    registry_faulty, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    disk = raw_disk(4 * MiB, dense_fraction=1.0)
    ref = f"{registry_faulty.host}/faults/pull:v1"
    async with RegistryClient(settings=SMALL) as client:
        await client.push_disk(disk, ref, format="artifact", segment_size=0)
        registry_faulty.drop_response_after("GET", r"/blobs/sha256:", 1_000_000)
        registry_faulty.set_faults("GET", r"/manifests/", status=503, times=2)
        await client.pull_disk(ref, tmp_path / "o.img")
    assert (tmp_path / "o.img").read_bytes() == disk.read_bytes()
    ranged = [r for r in registry_faulty.log if r.method == "GET" and r.status == 206]
    assert ranged


def test_no_aiohttp_error_leaks() -> None:
    async def main() -> None:
        async with RegistryClient(
            settings=RegistrySettings(retry_attempts=2, retry_backoff=0.01)
        ) as client:
            await client.resolve("127.0.0.1:9/nothing/here:v1")

    with pytest.raises(RegistryError, match=r"registry 127\.0\.0\.1:9: cannot connect"):
        asyncio.run(main())
