"""Concurrent imports benchmark: 20 imports at once vs the sum of the same imports one by one.

Twenty different images (raw and qcow2, ``--size-mib`` each, about half of
their MiBs random data) are served by ``busybox httpd`` (Range-capable, fast
C server) and imported through one ``diskplane importer serve`` process:

- sequential: each job submitted after the previous one finished (the sum
  of single imports);
- concurrent: all 20 submitted at once, with the default ``--max-running 4``
  and with ``--max-running 20``.

Every import ends fsync'd in its volume. Prints wall times, the ratios and
the service's peak RSS.

usage: .venv/bin/python bench/concurrent_imports.py [--size-mib 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MiB = 1024 * 1024
JOBS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def call(url: str, method: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def make_images(root: Path, size_mib: int) -> list[str]:
    names = []
    rng = random.Random(1)
    for index in range(JOBS):
        raw = root / f"img{index}.raw"
        with open(raw, "wb") as out:
            out.truncate(size_mib * MiB)
            for mib in range(0, size_mib, 2):
                out.seek(mib * MiB)
                out.write(rng.randbytes(MiB))
        if index % 2:
            qcow2 = root / f"img{index}.qcow2"
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                check=True,
            )
            raw.unlink()
            names.append(qcow2.name)
        else:
            names.append(raw.name)
    return names


class Service:
    def __init__(self, data: Path, max_running: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                PY,
                "-m",
                "controllers.cli",
                "--data-dir",
                str(data),
                "importer",
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--max-running",
                str(max_running),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        wait_http(self.url + "/readyz")

    def submit(self, http: str, name: str, size_mib: int, namespace: str) -> str:
        body = {
            "source": {"http": {"url": f"{http}/{name}"}},
            "target": {"namespace": namespace, "name": name.replace(".", "-")},
            "size": f"{size_mib * 2}Mi",
        }
        return str(call(self.url + "/v1/imports", "POST", body)["id"])

    def wait(self, job_id: str) -> None:
        while True:
            job = call(f"{self.url}/v1/imports/{job_id}", "GET")
            if job["phase"] == "Succeeded":
                return
            if job["phase"] in ("Failed", "Cancelled"):
                raise RuntimeError(f"job {job_id}: {job['reason']}: {job['message']}")
            time.sleep(0.02)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def run(
    work: Path, http: str, names: list[str], size_mib: int, max_running: int, sequential: bool
) -> tuple[float, float]:
    data = work / f"data-{max_running}-{int(sequential)}"
    service = Service(data, max_running)
    try:
        started = time.monotonic()
        if sequential:
            for name in names:
                service.wait(service.submit(http, name, size_mib, "seq"))
        else:
            ids = [service.submit(http, name, size_mib, "par") for name in names]
            for job_id in ids:
                service.wait(job_id)
        return time.monotonic() - started, service.peak_rss_mib()
    finally:
        service.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-concurrent-"))
    port = free_port()
    served = work / "www"
    served.mkdir()
    httpd = subprocess.Popen(
        ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(served)]
    )
    try:
        names = make_images(served, args.size_mib)
        http = f"http://127.0.0.1:{port}"
        results: dict[str, float] = {}
        results["sequential_s"], results["sequential_rss_mib"] = run(
            work, http, names, args.size_mib, 4, True
        )
        results["concurrent_4_s"], results["concurrent_4_rss_mib"] = run(
            work, http, names, args.size_mib, 4, False
        )
        results["concurrent_20_s"], results["concurrent_20_rss_mib"] = run(
            work, http, names, args.size_mib, 20, False
        )
    finally:
        httpd.terminate()
        httpd.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{JOBS} imports of {args.size_mib} MiB (raw and qcow2, half allocated), "
        f"{os.cpu_count()} cores"
    )
    for key in ("sequential", "concurrent_4", "concurrent_20"):
        print(
            f"{key:14s} {results[key + '_s']:7.2f} s   peak RSS "
            f"{results[key + '_rss_mib']:5.0f} MiB"
        )
    for key in ("concurrent_4", "concurrent_20"):
        print(f"{key} / sequential: {results[key + '_s'] / results['sequential_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
