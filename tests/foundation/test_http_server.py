"""The HTTP file server fixture serves ranges and injects the faults it promises."""

from __future__ import annotations

import os
import time

import aiohttp
import pytest

from tests.support.http_server import Faults, FileServer, TlsFileServer, basic_authorization

DATA = os.urandom(1_000_000)


async def _read_into(
    session: aiohttp.ClientSession,
    url: str,
    into: bytearray,
    timeout: aiohttp.ClientTimeout | None = None,
) -> Exception | None:
    """GET ``url`` appending the body to ``into``; the error that ended it, if any."""
    try:
        async with session.get(url, timeout=timeout) as resp:
            async for chunk in resp.content.iter_any():
                into += chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        return exc
    return None


@pytest.fixture
def served(http_server: FileServer) -> FileServer:
    (http_server.root / "disk.img").write_bytes(DATA)
    return http_server


async def test_each_test_starts_clean(http_server: FileServer) -> None:
    assert list(http_server.root.iterdir()) == []
    assert http_server.log == []
    assert http_server.host.startswith("127.0.0.1:")


async def test_head_reports_size_and_validators(served: FileServer) -> None:
    async with aiohttp.ClientSession() as session, session.head(served.url("disk.img")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(DATA))
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"')
        assert "Last-Modified" in resp.headers
    [record] = served.log
    assert (record.method, record.path, record.status, record.completed) == (
        "HEAD",
        "/disk.img",
        200,
        True,
    )


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=999990-2000000", 999_990, len(DATA) - 1),
    ],
    ids=["closed", "open-ended", "suffix", "past-the-end"],
)
async def test_range_gives_206(
    served: FileServer, range_header: str, first: int, last: int
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url("disk.img"), headers={"Range": range_header}) as resp,
    ):
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
        assert await resp.read() == DATA[first : last + 1]
    [record] = served.log
    assert record.range is not None
    assert record.range[0] == first
    assert record.completed
    assert record.bytes_sent == last - first + 1


async def test_unsatisfiable_range_gives_416(served: FileServer) -> None:
    headers = {"Range": f"bytes={len(DATA)}-"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url("disk.img"), headers=headers) as resp,
    ):
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"


async def test_missing_file_and_escape_give_404(served: FileServer) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ("nope.img", "%2e%2e/%2e%2e/etc/passwd"):
            async with session.get(served.url(name)) as resp:
                assert resp.status == 404


async def test_drop_after_n_bytes_then_resume_with_range(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(drop_after=300_000))
    async with aiohttp.ClientSession() as session:
        received = bytearray()
        error = await _read_into(session, served.url("disk.img"), received)
        assert isinstance(error, aiohttp.ClientPayloadError)
        assert len(received) == 300_000
        headers = {"Range": f"bytes={len(received)}-"}
        async with session.get(served.url("disk.img"), headers=headers) as resp:
            assert resp.status == 206
            received += await resp.read()
    assert bytes(received) == DATA
    dropped, resumed = served.log
    assert (dropped.bytes_sent, dropped.completed) == (300_000, False)
    assert resumed.range == (300_000, None)
    assert resumed.completed


async def test_drop_times_counts_responses(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(drop_after=0, drop_times=2))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(served.url("disk.img")) as resp:
                    await resp.read()
        async with session.get(served.url("disk.img")) as resp:
            assert await resp.read() == DATA
    assert [r.completed for r in served.log] == [False, False, True]


async def test_fail_status_k_times_then_ok(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(fail_status=503, fail_times=2, retry_after=1))
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(served.url("disk.img")) as resp:
                statuses.append(resp.status)
                if resp.status == 503:
                    assert resp.headers["Retry-After"] == "1"
                else:
                    assert await resp.read() == DATA
    assert statuses == [503, 503, 200]


async def test_stall_trips_a_read_timeout_then_clears(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(stall_seconds=2.0, stall_times=1))
    async with aiohttp.ClientSession() as session:
        timeout = aiohttp.ClientTimeout(sock_read=0.2)
        error = await _read_into(session, served.url("disk.img"), bytearray(), timeout=timeout)
        assert isinstance(error, TimeoutError)
        started = time.monotonic()
        async with session.get(served.url("disk.img")) as resp:
            assert await resp.read() == DATA
        assert time.monotonic() - started < 1.5


async def test_stall_delays_the_body(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(stall_seconds=0.3))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(served.url("disk.img")) as resp:
        assert await resp.read() == DATA
    assert time.monotonic() - started >= 0.3


async def test_no_range_serves_whole_file(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(no_range=True))
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url("disk.img"), headers={"Range": "bytes=10-"}) as resp,
    ):
        assert resp.status == 200
        assert "Accept-Ranges" not in resp.headers
        assert await resp.read() == DATA


async def test_no_head_and_no_content_length(served: FileServer) -> None:
    served.set_faults("disk.img", Faults(no_head=True, no_content_length=True))
    async with aiohttp.ClientSession() as session:
        async with session.head(served.url("disk.img")) as resp:
            assert resp.status == 405
        async with session.get(served.url("disk.img")) as resp:
            assert resp.status == 200
            assert "Content-Length" not in resp.headers
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.read() == DATA


async def test_redirect_chain_ends_at_the_file(served: FileServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.redirect_url("disk.img", hops=3)) as resp,
    ):
        assert resp.status == 200
        assert len(resp.history) == 3
        assert str(resp.url) == served.url("disk.img")
        assert await resp.read() == DATA
    assert [r.status for r in served.log] == [302, 302, 302, 200]


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
async def test_auth_required(served: FileServer, scheme: str) -> None:
    if scheme == "basic":
        served.require_basic("alice", "s3cret")
        good = {"Authorization": basic_authorization("alice", "s3cret")}
        bad = {"Authorization": basic_authorization("alice", "wrong")}
    else:
        served.require_bearer("tok-123")
        good, bad = {"Authorization": "Bearer tok-123"}, {"Authorization": "Bearer nope"}
    async with aiohttp.ClientSession() as session:
        for headers, status in (({}, 401), (bad, 401), (good, 200)):
            async with session.get(served.url("disk.img"), headers=headers) as resp:
                assert resp.status == status
                if status == 401:
                    assert resp.headers["WWW-Authenticate"].lower().startswith(scheme)


async def test_required_header(served: FileServer) -> None:
    served.require_header("X-Token", "abc")
    async with aiohttp.ClientSession() as session:
        async with session.get(served.url("disk.img")) as resp:
            assert resp.status == 403
        async with session.get(served.url("disk.img"), headers={"X-Token": "abc"}) as resp:
            assert resp.status == 200
    assert served.log[-1].headers["X-Token"] == "abc"


async def test_if_range(served: FileServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.head(served.url("disk.img")) as resp:
            etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
        cases = [
            (etag, 206),
            ('"other"', 200),
            (modified, 206),
            ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
        ]
        for validator, status in cases:
            headers = {"Range": "bytes=100-", "If-Range": validator}
            async with session.get(served.url("disk.img"), headers=headers) as resp:
                assert resp.status == status, validator
                body = await resp.read()
                assert body == (DATA[100:] if status == 206 else DATA)


async def test_https_with_the_test_ca(https_server: TlsFileServer) -> None:
    (https_server.root / "small.bin").write_bytes(b"hello")
    assert https_server.url("small.bin").startswith("https://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(https_server.url("small.bin")):
                pass
        context = https_server.client_ssl_context()
        async with session.get(https_server.url("small.bin"), ssl=context) as resp:
            assert await resp.read() == b"hello"
    assert https_server.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
