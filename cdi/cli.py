"""``diskplane import``: bring a disk from a URL, a path or nothing into a volume."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from cdi.checksum import Checksum
from cdi.errors import FinalImportError, ImportError, InvalidRequest, RetryableImportError
from cdi.pipeline import ImportResult, run_import
from cdi.progress import Progress
from cdi.request import Credentials, ImportRequest, SourceSpec, parse_quantity
from cdi.settings import ImportSettings
from cdi.volumes import VolumePool
from cdi.writer import human

EXIT_FINAL = 1
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: run it again later and it resumes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import a disk (http, https, s3, docker URL, local path, or --blank) into a volume",
        description="Import a VM disk into a volume as raw disk.img; re-run to resume.",
    )
    parser.add_argument("source", nargs="?", help="URL (http/https/s3/docker) or local path")
    parser.add_argument("--blank", action="store_true", help="create an empty sparse disk")
    parser.add_argument("--volume", required=True, metavar="NS/NAME")
    parser.add_argument("--size", required=True, help="volume capacity, e.g. 10Gi")
    parser.add_argument("--checksum", help="expected digest of the source, e.g. sha256:<hex>")
    parser.add_argument("--secret-file", type=Path, help="CDI-style secret with credentials")
    parser.add_argument("--ca-file", type=Path, help="CA bundle for TLS")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--concurrency", type=int, default=ImportSettings.concurrency)
    parser.add_argument(
        "--chunk-size", default="8Mi", help="bytes per ranged request and resume unit"
    )
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--s3-endpoint", help="endpoint for s3:// URLs (any S3-compatible store)")
    parser.add_argument("--s3-region", help="S3 region")
    parser.add_argument("--platform", help="registry: architecture to pick from an index")
    parser.add_argument("--preallocate", action="store_true", help="allocate the whole disk")
    remote = parser.add_argument_group("remote import (a running importer service)")
    remote.add_argument("--server", metavar="URL", help="send the job to this importer service")
    remote.add_argument("--secret-ref", help="with --server: the service's secret name")
    remote.add_argument("--cert-configmap", help="with --server: the service's CA bundle name")
    remote.add_argument("--api-token-file", type=Path, help="with --server: jobs API token")
    remote.add_argument("--server-ca-file", type=Path, help="with --server: CA of an https URL")
    parser.set_defaults(handler=handle)


def build_request(args: argparse.Namespace) -> ImportRequest:
    namespace, sep, name = str(args.volume).partition("/")
    if not sep:
        namespace, name = "default", namespace
    creds = Credentials.from_secret_file(args.secret_file) if args.secret_file else None
    if args.blank == bool(args.source):
        raise InvalidRequest("give exactly one of SOURCE or --blank")
    options = {
        "checksum": Checksum.parse(args.checksum) if args.checksum else None,
        "credentials": creds,
        "ca_file": args.ca_file,
        "insecure_skip_verify": args.insecure,
        "extra_headers": tuple(
            SourceSpec.from_cdi({"http": {"url": "x", "extraHeaders": args.header}}).extra_headers
        ),
    }
    if args.blank:
        source = SourceSpec(kind="blank")
    else:
        source = SourceSpec.from_cli(
            args.source,
            endpoint_url=args.s3_endpoint,
            region=args.s3_region,
            platform=args.platform,
            **options,
        )
    return ImportRequest(namespace, name, parse_quantity(args.size), source, args.preallocate)


class ProgressPrinter:
    """A live bar on a terminal; otherwise one line per phase."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._phase = ""

    def __call__(self, p: Progress) -> None:
        if p.phase != self._phase:
            if self.tty and self._phase:
                self.stream.write("\n")
            self._phase = p.phase
            if not self.tty:
                self.stream.write(f"{p.phase}: {self._numbers(p)}\n")
                self.stream.flush()
                return
        if self.tty:
            self.stream.write("\r\x1b[K" + self._bar(p))
            self.stream.flush()

    @property
    def gap(self) -> str:
        """A newline to end a live bar before another message."""
        return "\n" if self.tty and self._phase else ""

    def _numbers(self, p: Progress) -> str:
        total = human(p.source_bytes_total) if p.source_bytes_total is not None else "?"
        return f"{human(p.source_bytes_read)} / {total} ({p.cdi_progress})"

    def _bar(self, p: Progress) -> str:
        pct = p.percent or 0.0
        filled = int(pct / 100 * 30)
        eta = f" ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
        rate = f"{human(int(p.rate))}/s"
        return f"{p.phase:9} [{'#' * filled}{'.' * (30 - filled)}] {self._numbers(p)} {rate}{eta}"


def handle(args: argparse.Namespace) -> int:
    if args.server:
        return handle_remote(args)
    try:
        request = build_request(args)
    except ImportError as exc:
        print(f"diskplane import: {exc}", file=sys.stderr)
        return EXIT_FINAL
    try:
        chunk = parse_quantity(args.chunk_size)
    except ImportError as exc:
        print(f"diskplane import: {exc}", file=sys.stderr)
        return EXIT_FINAL
    settings = replace(ImportSettings(), concurrency=max(1, args.concurrency), chunk_size=chunk)
    pool = VolumePool.for_data_dir(
        Path(args.data_dir), filesystem_overhead=settings.filesystem_overhead
    )
    printer = ProgressPrinter(sys.stderr)
    try:
        result = asyncio.run(run_import(pool, request, on_progress=printer, settings=settings))
    except RetryableImportError as exc:
        print(f"{printer.gap}diskplane import: {exc} (run it again to resume)", file=sys.stderr)
        return EXIT_RETRYABLE
    except FinalImportError as exc:
        print(f"{printer.gap}diskplane import: {exc}", file=sys.stderr)
        return EXIT_FINAL
    except KeyboardInterrupt:
        print(
            f"{printer.gap}diskplane import: interrupted; run it again to resume", file=sys.stderr
        )
        return 130
    _report(result)
    return 0


def handle_remote(args: argparse.Namespace) -> int:
    """``--server URL``: hand the job to a running importer service and follow it."""
    from cdi.remote import RemoteOptionError, remote_request, run_remote

    try:
        body = remote_request(args)
    except (ImportError, RemoteOptionError) as exc:
        print(f"diskplane import: {exc}", file=sys.stderr)
        return EXIT_FINAL
    return run_remote(args, body)


def _report(result: ImportResult) -> None:
    print(
        f"imported {result.format} ({human(result.virtual_size)} virtual, "
        f"{human(result.source_bytes)} fetched, {human(result.bytes_written)} written"
        f"{', resumed' if result.resumed else ''}) into {result.volume.disk_path}"
        f"{f'; {result.checksum} verified' if result.checksum else ''}"
    )
