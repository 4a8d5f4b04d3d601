"""Upload benchmark: ``diskplane upload`` of a raw image vs ``curl -T`` to a plain aiohttp sink.

One dense raw image of ``--size-mib`` (default 2 GiB, random data) is sent
over loopback:

- floor: ``curl -T`` to a minimal aiohttp server that writes the body to a
  file and fsyncs it (what any upload must at least do);
- ours, upload phase: the service's async upload endpoint (bytes staged and
  fsync'd), driven by ``ImporterClient.upload_file``;
- ours, end to end: ``diskplane upload`` (sha256 of the file, upload, then
  the import into the volume, fsync'd) as a subprocess.

Both servers run as their own processes on 127.0.0.1 and are stopped at the end.

usage: .venv/bin/python bench/upload.py [--size-mib 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdi.service import ImporterClient, VolumeRef  # noqa: E402

PY = sys.executable
MiB = 1024 * 1024

SINK = textwrap.dedent(
    """
    import os, sys
    from aiohttp import web
    target = sys.argv[2]
    async def sink(request):
        with open(target, "wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return web.Response(text="ok")
    app = web.Application(client_max_size=0)
    app.router.add_put("/sink", sink)
    app.router.add_get("/", lambda r: web.Response(text="up"))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
    """
)


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


def make_image(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and the child's peak RSS in bytes."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:4]} failed: {process.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss * 1024


def floor(image: Path, work: Path) -> float:
    port = free_port()
    server = subprocess.Popen([PY, "-c", SINK, str(port), str(work / "sink.out")])
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        seconds, _ = timed(["curl", "-sS", "-T", str(image), f"http://127.0.0.1:{port}/sink"])
        return seconds
    finally:
        server.terminate()
        server.wait()


async def upload_phase(url: str, image: Path, name: str, size_mib: int) -> float:
    async with ImporterClient(url) as client:
        volume = VolumeRef("bench", name)
        size = f"{capacity_mib(size_mib)}Mi"
        await client.create_import(
            {"source": {"upload": {}}, "target": volume.to_json(), "size": size}
        )
        token = await client.upload_token(volume)
        started = time.monotonic()
        await client.upload_file(image, volume, token)
        seconds = time.monotonic() - started
        status = await client.upload_status(volume, token)
        final = await client.wait(status.job_id)
        if final.phase != "Succeeded":
            raise RuntimeError(f"upload import failed: {final.message}")
        return seconds


def capacity_mib(image_mib: int) -> int:
    """A capacity whose usable size (94 %, CDI's overhead) holds the image."""
    return image_mib * 110 // 100 + 64


def service_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=os.environ.get("TMPDIR")))
    try:
        image = work / "disk.raw"
        make_image(image, args.size_mib * MiB)
        size = image.stat().st_size
        results: dict[str, float] = {"floor_curl_sink_s": floor(image, work)}
        (work / "sink.out").unlink()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = work / "data"
        service = subprocess.Popen(
            [
                PY,
                "-m",
                "controllers.cli",
                "--data-dir",
                str(data),
                "importer",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            wait_http(url + "/readyz")
            results["upload_phase_s"] = asyncio.run(
                upload_phase(url, image, "phase", args.size_mib)
            )
            shutil.rmtree(data / "volumes" / "bench" / "phase")
            cli = [
                PY,
                "-m",
                "controllers.cli",
                "upload",
                str(image),
                "--volume",
                "bench/cli",
                "--size",
                f"{capacity_mib(args.size_mib)}Mi",
                "--url",
                url,
            ]
            results["diskplane_upload_end_to_end_s"], cli_rss = timed(cli)
            results["service_peak_rss_mib"] = service_rss(service.pid) / MiB
            results["cli_peak_rss_mib"] = cli_rss / MiB
        finally:
            service.terminate()
            service.wait()
        mb = size / 1e6
        print(f"image: {size / MiB:.0f} MiB raw, random data; {os.cpu_count()} cores")
        for key in ("floor_curl_sink_s", "upload_phase_s", "diskplane_upload_end_to_end_s"):
            print(f"{key:34s} {results[key]:7.2f} s  {mb / results[key]:7.0f} MB/s")
        ratio = results["upload_phase_s"] / results["floor_curl_sink_s"]
        print(f"upload phase / floor: {ratio:.2f}")
        print(
            f"service peak RSS {results['service_peak_rss_mib']:.0f} MiB, "
            f"CLI peak RSS {results['cli_peak_rss_mib']:.0f} MiB"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
