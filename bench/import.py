"""Benchmark: ``diskplane import`` of a disk image over HTTP against the CDI path and its peers.

Not a test. One run generates an image (``--format``: qcow2, vmdk
monolithicSparse or vhdx; ``--size`` virtual, about half of it allocated with
incompressible data), serves it with ``busybox httpd`` (a fast C server with
Range support), and times, best of ``--runs``, each ending with its output
fsync'd:

  (a) diskplane import URL                      (our pipeline; vmdk/vhdx: NBD export)
  (b) curl -o file URL; qemu-img convert; sync  (CDI's scratch path)
  (c) nbdkit curl + qemu-img convert; sync      (the streaming peer; CDI's vmdk/vhdx path)
  (d) qemu-img convert from a local copy; sync  (the floor)

then prints the ratios a/b, a/c, a/d, the peak RSS of (a), and S3 import
throughput (moto_server) with concurrency 1 vs the default.

    .venv/bin/python bench/import.py [--format qcow2] [--size 4Gi] [--runs 3] [--s3-size 512Mi]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MiB = 1 << 20
FORMATS = ("qcow2", "vmdk", "vhdx")  # qemu-img's -O vmdk default is monolithicSparse
# vhdx's default 8-32 MiB blocks would store the zero MiBs too (a full-size file over HTTP)
CREATE_OPTIONS = {"vhdx": "block_size=1M"}
CDI_FILTERS = ("readahead", "retry")  # CDI's nbdkit command line


def quantity(text: str) -> int:
    units = {"Gi": 1 << 30, "Mi": 1 << 20}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_image(work: Path, size: int, fmt: str = "qcow2", options: str = "") -> Path:
    """``size`` virtual, every other MiB random (about 50 % allocated), as ``fmt``."""
    raw = work / "src.raw"
    with raw.open("wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 2 * MiB):
            handle.seek(offset)
            handle.write(os.urandom(MiB))
    image = work / f"src.{fmt}"
    create = ["-o", options] if options else []
    subprocess.run(["qemu-img", "convert", "-O", fmt, *create, str(raw), str(image)], check=True)
    raw.unlink()
    return image


@contextlib.contextmanager
def busybox_httpd(root: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(root)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def timed(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return time.monotonic() - started, usage.ru_maxrss * 1024


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def diskplane_import(
    url: str, work: Path, size: int, run: int, extra: list[str] | None = None
) -> tuple[float, int]:
    data = work / "dp-data"
    shutil.rmtree(data, ignore_errors=True)
    capacity = str(int(size / 0.94) + 64 * MiB)
    argv = [str(VENV_BIN / "diskplane"), "--data-dir", str(data), "import", url,
            "--volume", f"bench/run{run}", "--size", capacity, *(extra or [])]  # fmt: skip
    seconds, rss = timed(argv)
    shutil.rmtree(data, ignore_errors=True)
    return seconds, rss


def cdi_path(url: str, work: Path, fmt: str = "qcow2") -> float:
    started = time.monotonic()
    scratch, out = work / f"scratch.{fmt}", work / "out-b.raw"
    subprocess.run(["curl", "-sf", "-o", str(scratch), url], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(scratch), str(out)], check=True
    )
    sync_file(out)
    seconds = time.monotonic() - started
    scratch.unlink()
    out.unlink()
    return seconds


def nbdkit_path(url: str, work: Path, fmt: str = "qcow2", filters: tuple[str, ...] = ()) -> float:
    out = work / "out-c.raw"
    started = time.monotonic()
    script = f'qemu-img convert -f {fmt} -O raw "$uri" {out}'
    flags = [f"--filter={name}" for name in filters]
    argv = ["nbdkit", "-U", "-", "-r", *flags, "curl", f"url={url}", "--run", script]
    subprocess.run(argv, check=True)
    sync_file(out)
    seconds = time.monotonic() - started
    out.unlink()
    return seconds


def floor_path(local: Path, work: Path, fmt: str = "qcow2") -> float:
    out = work / "out-d.raw"
    started = time.monotonic()
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(local), str(out)], check=True
    )
    sync_file(out)
    seconds = time.monotonic() - started
    out.unlink()
    return seconds


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=1).close()
                break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


S3_VARIANTS = (("1", "8Mi"), ("4", "8Mi"), ("4", "64Mi"))


def s3_throughput(work: Path, size: int, runs: int) -> dict[tuple[str, str], float]:
    """MB/s of a raw S3 import per (concurrency, chunk size)."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    raw = work / "s3.raw"
    with raw.open("wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))
    results: dict[tuple[str, str], float] = {}
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                              aws_secret_access_key="s", region_name="us-east-1")  # fmt: skip
        client.create_bucket(Bucket="bench")
        config = TransferConfig(multipart_chunksize=64 * MiB)
        client.upload_file(str(raw), "bench", "disk.raw", Config=config)
        url = "s3://bench/disk.raw"
        for concurrency, chunk in S3_VARIANTS:
            extra = ["--s3-endpoint", endpoint, "--concurrency", concurrency, "--chunk-size", chunk]
            best = min(diskplane_import(url, work, size, i, extra)[0] for i in range(runs))
            results[concurrency, chunk] = size / best / 1e6
    raw.unlink()
    return results


def http_comparison(
    work: Path, size: int, runs: int, fmt: str = "qcow2", options: str = ""
) -> None:
    serve = work / "www"
    serve.mkdir()
    image = make_image(serve, size, fmt, options)
    print(f"image: {image.stat().st_size / MiB:.0f} MiB {fmt}, {size / MiB:.0f} MiB virtual")
    with busybox_httpd(serve) as base:
        url = f"{base}/{image.name}"
        a_runs = [diskplane_import(url, work, size, i) for i in range(runs)]
        a, rss = min(t for t, _ in a_runs), max(r for _, r in a_runs)
        b = min(cdi_path(url, work, fmt) for _ in range(runs))
        c = min(nbdkit_path(url, work, fmt) for _ in range(runs))
        ahead = 0.0  # CDI's own nbdkit flags; for the formats CDI streamed through nbdkit
        if fmt != "qcow2":
            ahead = min(nbdkit_path(url, work, fmt, CDI_FILTERS) for _ in range(runs))
    d = min(floor_path(image, work, fmt) for _ in range(runs))
    print(f"(a) diskplane import      {a:7.2f} s  peak RSS {rss / MiB:.0f} MiB")
    print(f"(b) curl + qemu-img (CDI) {b:7.2f} s")
    print(f"(c) nbdkit curl + convert {c:7.2f} s")
    if fmt != "qcow2":
        print(f"(c') same + {'/'.join(CDI_FILTERS)} {ahead:6.2f} s  a/c' {a / ahead:.2f}")
    print(f"(d) local qemu-img floor  {d:7.2f} s")
    print(f"a/b {a / b:.2f} (target <= 0.7)  a/c {a / c:.2f} (<= 1.0)  a/d {a / d:.2f} (<= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, default="qcow2", help="source image format")
    parser.add_argument(
        "--create-options", default=None, help="qemu-img -o for the image ('' for its defaults)"
    )
    parser.add_argument("--size", default="4Gi", help="virtual size of the image (default 4Gi)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--s3-size", default="512Mi", help="raw object for the S3 run (0: skip)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--only-s3", action="store_true", help="skip the HTTP comparison")
    args = parser.parse_args()
    size = quantity(args.size)
    work = Path(tempfile.mkdtemp(prefix="diskplane-bench-", dir=args.work_dir))
    try:
        if not args.only_s3:
            options = args.create_options
            if options is None:
                options = CREATE_OPTIONS.get(args.format, "")
            http_comparison(work, size, args.runs, args.format, options)
        s3_size = quantity(args.s3_size)
        if s3_size:
            print(f"S3 raw import of {s3_size / MiB:.0f} MiB from moto_server:")
            for (concurrency, chunk), rate in s3_throughput(work, s3_size, args.runs).items():
                print(f"    concurrency {concurrency}, chunk {chunk}: {rate:.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
