"""The ``diskplane`` commands of containerdisk, run as a user runs them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.containerdisk.conftest import MiB

pytestmark = pytest.mark.timeout(120)


def diskplane(
    *args: str, data_dir: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=90,
        input=stdin,
    )


def test_push_volume_pull_and_inspect(
    registry, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    volume = data_dir / "volumes" / "default" / "vm1"
    volume.mkdir(parents=True)
    disk = raw_disk(5 * MiB)
    disk.rename(volume / "disk.img")
    ref = f"{registry.host}/cli/vm1:v1"
    pushed = diskplane(
        "push", "--volume", "default/vm1", ref, "--compression", "zstd", data_dir=data_dir
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed" in pushed.stdout
    assert "upload: done" in pushed.stderr  # not a terminal: one line per phase
    inspected = diskplane("inspect", ref, data_dir=data_dir)
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["disk"]["kind"] == "containerdisk"
    assert info["disk"]["format"] == "raw"
    assert info["disk"]["size"] == 5 * MiB
    assert info["layers"][0]["mediaType"].endswith("tar+zstd")
    out = tmp_path / "out.img"
    pulled = diskplane("pull", ref, "--to", str(out), data_dir=data_dir)
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == (volume / "disk.img").read_bytes()


def test_wrong_password_from_stdin_fails_cleanly(
    registry_auth, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    secret = "wrong-secret-xyz"
    result = diskplane(
        "push",
        str(raw_disk()),
        f"{registry_auth.host}/cli/x:v1",
        "--raw",
        "--username",
        registry_auth.username,
        "--password-stdin",
        data_dir=tmp_path,
        stdin=secret + "\n",
    )
    assert result.returncode == 1
    assert "401" in result.stderr
    assert secret not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_build_writes_a_layout_skopeo_reads(raw_disk: Callable[..., Path], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    result = diskplane(
        "build", str(raw_disk()), "--oci-layout", str(layout), "--tag", "v3", data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:v3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(inspect.stdout)["Labels"]["io.diskplane.disk.format"] == "qcow2"


def test_missing_volume_is_a_clear_error(tmp_path: Path) -> None:
    result = diskplane("push", "--volume", "default/nope", "127.0.0.1:1/x:v1", data_dir=tmp_path)
    assert result.returncode == 1
    assert "volume default/nope has no disk" in result.stderr


def test_push_index_command(registry, raw_disk: Callable[..., Path], tmp_path: Path) -> None:
    repo = f"{registry.host}/cli/multi"
    for arch in ("amd64", "arm64"):
        done = diskplane(
            "push",
            str(raw_disk(name=f"{arch}.raw")),
            f"{repo}:{arch}",
            "--raw",
            "--platform",
            f"linux/{arch}",
            data_dir=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    result = diskplane(
        "push-index", f"{repo}:v1", f"{repo}:amd64", f"{repo}:arm64", data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    inspected = diskplane("inspect", f"{repo}:v1", "--platform", "linux/arm64", data_dir=tmp_path)
    assert json.loads(inspected.stdout)["indexDigest"] in result.stdout


def test_auth_options_password_file_authfile_and_ca_file(
    registry_auth, registry_tls, raw_disk: Callable[..., Path], tmp_path: Path
) -> None:
    disk = str(raw_disk())
    secret = tmp_path / "password"
    secret.write_text(registry_auth.password + "\n")
    ref = f"{registry_auth.host}/cli/auth:v1"
    pushed = diskplane(
        "push",
        disk,
        ref,
        "--raw",
        "--username",
        registry_auth.username,
        "--password-file",
        str(secret),
        data_dir=tmp_path,
    )
    assert pushed.returncode == 0, pushed.stderr
    token = base64.b64encode(f"{registry_auth.username}:{registry_auth.password}".encode())
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {registry_auth.host: {"auth": token.decode()}}}))
    pulled = diskplane(
        "pull", ref, "--to", str(tmp_path / "a.img"), "--authfile", str(authfile), data_dir=tmp_path
    )
    assert pulled.returncode == 0, pulled.stderr
    tls_ref = f"{registry_tls.host}/cli/tls:v1"
    refused = diskplane("push", disk, tls_ref, "--raw", data_dir=tmp_path)
    assert refused.returncode == 1
    assert "--ca-file" in refused.stderr
    trusted = diskplane(
        "push", disk, tls_ref, "--raw", "--ca-file", str(registry_tls.ca_file), data_dir=tmp_path
    )
    assert trusted.returncode == 0, trusted.stderr
