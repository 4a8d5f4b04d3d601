"""Commands: ``diskplane importer serve`` and ``diskplane upload``.

``run_remote_import`` is what ``diskplane import ... --server URL`` calls to
hand a job to a running service instead of importing in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

from cdi.service.client import ImporterClient, JobStatus
from cdi.service.errors import ClientError, RequestInvalid, ServiceError
from cdi.service.model import VolumeRef, parse_quantity
from cdi.service.progressbar import ProgressBar
from cdi.service.settings import DEFAULT_PORT, ServiceSettings

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
HASH_CHUNK = 4 * 1024 * 1024


def register(subparsers: Any) -> None:
    importer = subparsers.add_parser("importer", help="the importer service")
    sub = importer.add_subparsers(dest="importer_command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the importer service (jobs API, uploads, metrics)")
    serve.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", help="HOST:PORT")
    serve.add_argument("--data-dir", default=argparse.SUPPRESS, help="state directory")
    serve.add_argument("--max-running", type=int, default=4, help="imports running at once")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate for the listener")
    serve.add_argument("--tls-key", type=Path, help="PEM key for the listener")
    serve.add_argument("--api-token-file", type=Path, help="file holding the jobs API token")
    serve.add_argument(
        "--allow-insecure",
        action="store_true",
        help="serve a non-loopback address without TLS and token",
    )
    serve.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    serve.set_defaults(handler=_serve)

    upload = subparsers.add_parser("upload", help="upload a disk image into a volume")
    upload.add_argument("file", type=Path)
    upload.add_argument("--volume", required=True, help="NAMESPACE/NAME")
    upload.add_argument("--size", required=True, help="volume capacity, e.g. 10Gi")
    upload.add_argument("--url", default=DEFAULT_URL, help="importer service URL")
    upload.add_argument("--checksum", help="sha256:<hex> (computed from FILE when omitted)")
    upload.add_argument(
        "--api-token-file", type=Path, help="jobs API token, if the service has one"
    )
    upload.add_argument("--ca-file", type=Path, help="CA bundle for an https URL")
    upload.add_argument("--no-wait", action="store_true", help="return once the bytes are sent")
    upload.set_defaults(handler=_upload)


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    token = args.api_token_file.read_text().strip() if args.api_token_file else None
    settings = ServiceSettings(
        data_dir=Path(args.data_dir).resolve(),
        host=host or "127.0.0.1",
        port=int(port),
        max_running=args.max_running,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        api_token=token,
        allow_insecure=args.allow_insecure,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from cdi.service.app import serve

    def ready(bound: int) -> None:
        if args.port_file is not None:
            args.port_file.write_text(str(bound))

    try:
        asyncio.run(serve(settings, ready))
    except ServiceError as exc:
        print(f"importer: {exc}", file=sys.stderr)
        return 1
    return 0


def _client(url: str, token_file: Path | None, ca_file: Path | None) -> ImporterClient:
    token = token_file.read_text().strip() if token_file else None
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    return ImporterClient(url, token=token, ssl_context=context)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _upload(args: argparse.Namespace) -> int:
    try:
        volume = VolumeRef.parse(args.volume)
        parse_quantity(args.size)
        return asyncio.run(_upload_async(args, volume))
    except (ServiceError, OSError) as exc:
        print(f"upload: {exc}", file=sys.stderr)
        return 1


async def _upload_async(args: argparse.Namespace, volume: VolumeRef) -> int:
    bar = ProgressBar(f"upload {args.file.name} -> {volume}")
    checksum = args.checksum or await asyncio.to_thread(_sha256, args.file)
    async with _client(args.url, args.api_token_file, args.ca_file) as client:
        job = await _upload_job(client, volume, args.size, checksum)
        token = await client.upload_token(volume)
        status = await client.upload_file(args.file, volume, token, on_progress=bar.update)
        bar.line(f"{status.bytes_received} bytes received; import {status.phase}")
        if args.no_wait:
            return 0
        final = await client.wait(job.id, lambda s: bar.update(s.bytes_read, s.bytes_total))
    return _report(bar, final)


async def _upload_job(
    client: ImporterClient, volume: VolumeRef, size: str, checksum: str
) -> JobStatus:
    """A new upload job, or the unfinished one for this volume (resuming an upload)."""
    request = {
        "source": {"upload": {}},
        "target": volume.to_json(),
        "size": size,
        "checksum": checksum,
    }
    try:
        return await client.create_import(request)
    except ClientError as exc:
        if exc.status != 409:
            raise
    for job in await client.list_imports():
        same = job.raw["target"] == volume.to_json() and "upload" in job.raw["source"]
        if same and job.phase == "UploadPending" and job.raw["checksum"] == checksum:
            return job
    raise RequestInvalid("volume", f"volume {volume} already has an unfinished import")


def _report(bar: ProgressBar, final: JobStatus) -> int:
    if final.phase == "Succeeded":
        bar.line("import succeeded")
        return 0
    bar.line(f"import {final.phase.lower()}: {final.message}")
    return 1


async def run_remote_import(
    server_url: str,
    request: dict[str, Any],
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    label: str = "import",
) -> int:
    """Send an ImportRequest body to a running service and follow it with a progress bar.

    Returns the exit code ``diskplane import`` should return (0 on success).
    """
    bar = ProgressBar(label)
    async with ImporterClient(server_url, token=token, ssl_context=ssl_context) as client:
        job = await client.create_import(request)
        final = await client.wait(job.id, lambda s: bar.update(s.bytes_read, s.bytes_total))
    return _report(bar, final)
