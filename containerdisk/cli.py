"""``diskplane push | pull | inspect | build``: containerDisks and disk artifacts.

Handlers take the parsed namespace (``data_dir`` a Path) and return the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

from containerdisk.build import build_oci_layout
from containerdisk.client import RegistryClient
from containerdisk.errors import ContainerDiskError
from containerdisk.oci import Platform
from containerdisk.progress import ProgressDisplay
from containerdisk.push import DiskFormatPolicy, volume_disk

MiB = 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
PULL_MMAP_THRESHOLD = 4 * 1024 * 1024  # above every pull piece (<= 1 MiB)
PULL_TRIM_THRESHOLD = 64 * 1024 * 1024  # free heap kept for reuse while pulling


def _auth_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry access")
    group.add_argument("--username", help="registry user name")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (or token) from standard input",
    )
    secret.add_argument("--password-file", type=Path, help="read the password from this file")
    group.add_argument(
        "--authfile",
        type=Path,
        help="Docker config.json-style credentials (default: the usual files)",
    )
    group.add_argument("--ca-file", type=Path, help="PEM CA bundle that signs the registry")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP and unverified TLS (localhost never needs it)",
    )


def register(subparsers: Any) -> None:
    push = subparsers.add_parser("push", help="push a disk or volume as a containerDisk/artifact")
    src = push.add_mutually_exclusive_group(required=True)
    src.add_argument("disk", nargs="?", type=Path, help="disk file (raw or qcow2)")
    src.add_argument("--volume", metavar="NS/NAME", help="push a volume of the pool")
    push.add_argument("ref", help="target reference, e.g. registry:5000/repo:tag")
    push.add_argument("--format", choices=("containerdisk", "artifact"), default="containerdisk")
    push.add_argument(
        "--compression",
        choices=("gzip", "zstd", "none"),
        help="layer compression (containerdisk: gzip; artifact: zstd)",
    )
    push.add_argument("--platform", help="os/arch[/variant] of the image (default: this host)")
    push.add_argument(
        "--raw",
        action="store_true",
        help="keep a raw disk raw (default for a containerDisk: convert to qcow2)",
    )
    push.add_argument(
        "--segment-size",
        type=int,
        metavar="MiB",
        help="artifact segment size in MiB (0: one blob; default 64)",
    )
    push.add_argument(
        "--mount-from",
        action="append",
        default=[],
        metavar="REPO",
        help="try cross-repository mounts from this repository",
    )
    _auth_options(push)
    push.set_defaults(handler=_run_push)

    pull = subparsers.add_parser("pull", help="pull a containerDisk/artifact's disk into a file")
    pull.add_argument("ref")
    pull.add_argument("--to", type=Path, required=True, help="destination file (atomic)")
    pull.add_argument("--platform")
    pull.add_argument("--disk-path", help="the disk's path in the layer (default: disk/*)")
    _auth_options(pull)
    pull.set_defaults(handler=_run_pull)

    inspect = subparsers.add_parser("inspect", help="manifest, layers and disk of an image")
    inspect.add_argument("ref")
    inspect.add_argument("--platform")
    _auth_options(inspect)
    inspect.set_defaults(handler=_run_inspect)

    index = subparsers.add_parser(
        "push-index", help="combine per-platform images of one repository into an index"
    )
    index.add_argument("ref", help="the index's reference (repo:tag)")
    index.add_argument("images", nargs="+", help="per-platform images in the same repository")
    _auth_options(index)
    index.set_defaults(handler=_run_push_index, platform=None)

    build = subparsers.add_parser("build", help="build a containerDisk into an OCI layout dir")
    build.add_argument("disk", type=Path)
    build.add_argument("--oci-layout", type=Path, required=True, metavar="DIR")
    build.add_argument("--tag", default="latest")
    build.add_argument("--format", choices=("containerdisk", "artifact"), default="containerdisk")
    build.add_argument("--compression", choices=("gzip", "zstd", "none"))
    build.add_argument("--platform")
    build.add_argument("--raw", action="store_true")
    build.set_defaults(handler=_run_build)


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\n")
    return None


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(
        username=args.username,
        password=_password(args),
        auth_file=args.authfile,
        ca_file=args.ca_file,
        insecure=args.insecure,
        platform=args.platform,
    )


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _bound_malloc(*, pull: bool = False) -> None:
    """Keep peak RSS flat without paying the kernel for every buffer.

    glibc raises its mmap threshold after the first large free, after which multi-MiB
    buffers freed by worker threads stay in per-thread arenas: peak RSS then grows with
    the disk instead of staying flat. A fixed 1 MiB threshold keeps it flat for push,
    whose blocks are several MiB.

    Pull's pieces are all at most 1 MiB (socket reads, decompressed output), so there
    the threshold sits above them and the trim threshold high: freed pieces are reused
    from the heap instead of each being a fresh mmap whose pages fault in and are zeroed,
    then unmapped (that cost ~0.7 s of CPU per GiB pulled). The heap stays bounded by
    the bounded queues plus the retained free space (PULL_TRIM_THRESHOLD).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        if pull:
            libc.mallopt(_M_MMAP_THRESHOLD, PULL_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, PULL_TRIM_THRESHOLD)
        else:
            libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)


def _run(coro: Any, *, pull: bool = False) -> int:
    _bound_malloc(pull=pull)
    try:
        return int(asyncio.run(coro))
    except (ContainerDiskError, OSError) as exc:
        return _fail(exc)


def _run_push(args: argparse.Namespace) -> int:
    try:
        disk = volume_disk(args.data_dir, args.volume) if args.volume else Path(args.disk)
    except ContainerDiskError as exc:
        return _fail(exc)
    # A volume streams as it is (no qcow2 temp copy); a disk file becomes qcow2 unless --raw.
    policy: DiskFormatPolicy = (
        "keep" if (args.raw or args.volume or args.format == "artifact") else "qcow2"
    )
    seg = None if args.segment_size is None else args.segment_size * MiB

    async def main() -> int:
        progress = ProgressDisplay()
        async with _client(args) as client:
            result = await client.push_disk(
                disk,
                args.ref,
                format=args.format,
                compression=args.compression,
                platform=args.platform,
                disk_format=policy,
                segment_size=seg,
                mount_from=args.mount_from,
                progress=progress,
            )
        progress.finish()
        print(
            f"pushed {result.reference} ({result.disk_format}, {result.uploaded_blobs} blobs"
            f" sent, {result.skipped_blobs} already there, {result.mounted_blobs} mounted)"
        )
        return 0

    return _run(main())


def _run_pull(args: argparse.Namespace) -> int:
    async def main() -> int:
        progress = ProgressDisplay()
        async with _client(args) as client:
            digest = await client.pull_disk(
                args.ref, args.to, disk_path=args.disk_path, progress=progress
            )
        progress.finish()
        print(f"pulled {args.ref}@{digest} to {args.to}")
        return 0

    return _run(main(), pull=True)


def _run_inspect(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with _client(args) as client:
            info = await client.inspect(args.ref)
        print(json.dumps(info, indent=2))
        return 0

    return _run(main())


def _run_push_index(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with _client(args) as client:
            digest = await client.push_index(args.ref, list(args.images))
        print(f"pushed index {args.ref}@{digest}")
        return 0

    return _run(main())


def _run_build(args: argparse.Namespace) -> int:
    async def main() -> int:
        progress = ProgressDisplay()
        digest = await build_oci_layout(
            args.disk,
            args.oci_layout,
            tag=args.tag,
            format=args.format,
            compression=args.compression,
            platform=Platform.parse(args.platform) if args.platform else None,
            disk_format="keep" if args.raw or args.format == "artifact" else "qcow2",
            progress=progress,
        )
        progress.finish()
        print(f"built {args.oci_layout}:{args.tag} ({digest})")
        return 0

    return _run(main())
