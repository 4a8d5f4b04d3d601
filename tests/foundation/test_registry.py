"""The docker-registry fixtures: blob and image round trips in all three variants."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support.registry import Registry, write_oci_layout

SKOPEO_TIMEOUT = 60


@pytest.fixture(params=["registry", "registry_auth", "registry_tls"])
def any_registry(request: pytest.FixtureRequest) -> Registry:
    registry: Registry = request.getfixturevalue(request.param)
    return registry


async def _push_blob(session: aiohttp.ClientSession, reg: Registry, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"{reg.url}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    async with session.put(location, params={"digest": digest}, data=data) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def test_blob_push_and_pull_over_the_v2_api(any_registry: Registry) -> None:
    data = os.urandom(200_000)
    connector = aiohttp.TCPConnector(ssl=any_registry.ssl_context() or True)
    async with aiohttp.ClientSession(headers=any_registry.headers(), connector=connector) as s:
        async with s.get(f"{any_registry.url}/v2/_catalog") as resp:
            assert (await resp.json())["repositories"] == []  # emptied for this test
        digest = await _push_blob(s, any_registry, "test/blob", data)
        async with s.get(f"{any_registry.url}/v2/test/blob/blobs/{digest}") as resp:
            assert resp.status == 200
            assert await resp.read() == data
    any_registry.wait_for_request(lambda r: r.method == "GET" and digest in r.path)
    uploads = [(r.method, r.status) for r in any_registry.blob_uploads("test/blob")]
    assert uploads == [("POST", 202), ("PUT", 201)]


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=SKOPEO_TIMEOUT,
        check=False,
    )


def test_skopeo_copies_an_image_there_and_back(any_registry: Registry, tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "src", {"disk/disk.img": os.urandom(64 * 1024)})
    remote = f"docker://{any_registry.host}/test/cdisk:v1"
    pushed = _skopeo(
        "copy", "--preserve-digests", *any_registry.skopeo_flags("dest"), layout.reference, remote
    )
    assert pushed.returncode == 0, pushed.stderr
    back = f"oci:{tmp_path / 'back'}:v1"
    pulled = _skopeo("copy", "--preserve-digests", *any_registry.skopeo_flags("src"), remote, back)
    assert pulled.returncode == 0, pulled.stderr
    layer = layout.layer_digest.removeprefix("sha256:")
    assert (tmp_path / "back" / "blobs" / "sha256" / layer).read_bytes() == (
        layout.path / "blobs" / "sha256" / layer
    ).read_bytes()
    assert [r.repository for r in any_registry.blob_uploads()] != []
    assert {r.repository for r in any_registry.blob_uploads()} == {"test/cdisk"}


async def test_auth_registry_refuses_anonymous_clients(registry_auth: Registry) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{registry_auth.url}/v2/test/blob/blobs/uploads/") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        wrong = {"Authorization": "Basic " + "ZGlza3BsYW5lOm5vcGU="}  # diskplane:nope
        async with session.get(f"{registry_auth.url}/v2/", headers=wrong) as resp:
            assert resp.status == 401


def test_auth_registry_refuses_skopeo_without_creds(
    registry_auth: Registry, tmp_path: Path
) -> None:
    layout = write_oci_layout(tmp_path / "src", {"a": b"x"})
    result = _skopeo(
        "copy",
        "--dest-tls-verify=false",
        layout.reference,
        f"docker://{registry_auth.host}/test/denied:v1",
    )
    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower()


async def test_tls_registry_needs_the_ca(registry_tls: Registry) -> None:
    assert registry_tls.certs_dir is not None
    assert (registry_tls.certs_dir / "ca.crt").is_file()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{registry_tls.url}/v2/")
        async with session.get(f"{registry_tls.url}/v2/", ssl=registry_tls.ssl_context()) as r:
            assert r.status == 200
            assert json.loads(await r.text()) == {}
