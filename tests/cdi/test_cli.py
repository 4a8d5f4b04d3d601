"""``diskplane import`` end to end: exit codes, phase lines, secrets, blank, progress bar."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from cdi import Progress
from cdi.cli import ProgressPrinter
from tests.cdi.conftest import same_disk
from tests.support.http_server import FileServer
from tests.support.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]


def diskplane(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controllers.cli", "--data-dir", str(data_dir), "import", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_prints_one_line_per_phase_and_succeeds(
    http_server: FileServer, tmp_path: Path, base: Path
) -> None:
    import hashlib

    (http_server.root / "d.raw").write_bytes(base.read_bytes())
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    run = diskplane(
        tmp_path / "data", http_server.url("d.raw"), "--volume", "ns/d", "--size", "64Mi",
        "--checksum", f"sha256:{digest}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    phases = [line.split(":")[0] for line in run.stderr.splitlines()]
    assert phases == ["probe", "transfer", "resize", "verify", "done"]
    assert "100.0%" in run.stderr.splitlines()[-1]
    assert "verified" in run.stdout
    from cdi import VolumePool

    assert same_disk(base, VolumePool.for_data_dir(tmp_path / "data").get("ns", "d"))


def test_secret_file_and_failures(http_server: FileServer, tmp_path: Path, base: Path) -> None:
    (http_server.root / "d.raw").write_bytes(base.read_bytes())
    http_server.require_basic("bob", "hunter2-secret")
    secret = tmp_path / "secret.json"
    secret.write_text(
        json.dumps({"stringData": {"accessKeyId": "bob", "secretKey": "hunter2-secret"}})
    )
    ok = diskplane(
        tmp_path / "data", http_server.url("d.raw"), "--volume", "ns/a", "--size", "64Mi",
        "--secret-file", str(secret),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    secret.write_text(json.dumps({"stringData": {"username": "bob", "password": "wrong-secret-9"}}))
    denied = diskplane(
        tmp_path / "data", http_server.url("d.raw"), "--volume", "ns/b", "--size", "64Mi",
        "--secret-file", str(secret),
    )  # fmt: skip
    assert denied.returncode == 1
    assert "refused access" in denied.stderr
    assert "wrong-secret-9" not in denied.stderr + denied.stdout
    http_server.clear_auth()
    missing = diskplane(
        tmp_path / "data", http_server.url("nope.raw"), "--volume", "ns/c", "--size", "64Mi"
    )
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    bad = diskplane(tmp_path / "data", "/x.img", "--volume", "ns/c", "--size", "64Mi",
                    "--checksum", "sha256:xyz")  # fmt: skip
    assert bad.returncode == 1
    assert "checksum" in bad.stderr


def test_blank_and_local_path(tmp_path: Path, base: Path) -> None:
    blank = diskplane(tmp_path / "data", "--blank", "--volume", "ns/empty", "--size", "1Gi")
    assert blank.returncode == 0, blank.stderr
    disk = tmp_path / "data" / "volumes" / "ns" / "empty" / "disk.img"
    assert disk.stat().st_size == 962 * 1024 * 1024  # 1 GiB minus 6 %, rounded down to 1 MiB
    local = diskplane(tmp_path / "data", str(base), "--volume", "ns/local", "--size", "64Mi")
    assert local.returncode == 0, local.stderr


def test_progress_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    printer = ProgressPrinter(out)
    printer(Progress("transfer", 45 * 1024 * 1024, 100 * 1024 * 1024, 0, 10 * 1024 * 1024, 5.5))
    text = out.getvalue()
    assert "\r" in text
    assert "45.00%" in text
    assert "10 MiB/s" in text
    assert "ETA 6s" in text or "ETA 5s" in text


def test_s3_url_with_endpoint_and_keys(s3_server: S3Server, tmp_path: Path, base: Path) -> None:
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "d.raw", base.read_bytes())
    secret = tmp_path / "s3.yaml"
    secret.write_text(
        f"stringData:\n  accessKeyId: {s3_server.access_key}\n  secretKey: {s3_server.secret_key}\n"
    )
    run = diskplane(
        tmp_path / "data", "s3://disks/d.raw", "--s3-endpoint", s3_server.endpoint_url,
        "--secret-file", str(secret), "--volume", "ns/s3", "--size", "64Mi",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    from cdi import VolumePool

    assert same_disk(base, VolumePool.for_data_dir(tmp_path / "data").get("ns", "s3"))
