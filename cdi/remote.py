"""``diskplane import ... --server URL``: the same command, run by an importer service.

The command line is turned into the service's ImportRequest body (a
DataVolume-shaped ``source``) and handed to
:func:`cdi.service.cli.run_remote_import`, which follows the job with the
service's progress bar. Local files cannot be sent this way (the service
cannot read the client's disk): ``diskplane upload`` does that.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Any

from cdi.checksum import Checksum
from cdi.request import parse_quantity

EXIT_NO_ANSWER = 75  # the service did not answer: try again later
EXIT_INTERRUPTED = 130


class RemoteOptionError(Exception):
    """An option that has no meaning for a job run by the service."""


_LOCAL_ONLY = (
    ("secret_file", "--secret-file (name the service's secret with --secret-ref)"),
    ("ca_file", "--ca-file (name the service's CA bundle with --cert-configmap)"),
    ("preallocate", "--preallocate"),
)


def remote_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ImportRequest body for the command line in ``args``."""
    for attr, what in _LOCAL_ONLY:
        if getattr(args, attr, None):
            raise RemoteOptionError(f"{what} cannot be used with --server")
    if bool(args.blank) == bool(args.source):
        raise RemoteOptionError("give exactly one of SOURCE or --blank")
    namespace, sep, name = str(args.volume).partition("/")
    if not sep:
        namespace, name = "default", namespace
    parse_quantity(args.size)  # refuse a bad size before the request
    body: dict[str, Any] = {
        "source": _source(args),
        "target": {"namespace": namespace, "name": name},
        "size": args.size,
    }
    if args.checksum:
        Checksum.parse(args.checksum)
        body["checksum"] = args.checksum
    return body


def _source(args: argparse.Namespace) -> dict[str, Any]:
    if args.blank:
        return {"blank": {}}
    url = str(args.source)
    spec: dict[str, Any] = {"url": url}
    if args.secret_ref:
        spec["secretRef"] = args.secret_ref
    if args.cert_configmap:
        spec["certConfigMap"] = args.cert_configmap
    if args.insecure:
        spec["insecureSkipVerify"] = True
    if url.startswith(("docker://", "oci-archive://")):
        if args.platform:
            spec["platform"] = {"architecture": args.platform}
        return {"registry": spec}
    if url.startswith("s3://") or (url.startswith(("http://", "https://")) and args.s3_endpoint):
        if args.s3_endpoint:
            spec["endpoint"] = args.s3_endpoint
        if args.s3_region:
            spec["region"] = args.s3_region
        return {"s3": spec}
    if url.startswith(("http://", "https://")):
        if args.header:
            spec["extraHeaders"] = list(args.header)
        return {"http": spec}
    raise RemoteOptionError(
        f"source {url} is a local path; the service cannot read it (use diskplane upload)"
    )


def run_remote(args: argparse.Namespace, body: dict[str, Any]) -> int:
    """Submit ``body`` to ``args.server`` and follow it; returns the exit code."""
    from cdi.service.cli import run_remote_import
    from cdi.service.errors import ClientError

    token = args.api_token_file.read_text().strip() if args.api_token_file else None
    context = (
        ssl.create_default_context(cafile=str(args.server_ca_file)) if args.server_ca_file else None
    )
    target = body["target"]
    label = f"import {target['namespace']}/{target['name']}"
    try:
        return asyncio.run(
            run_remote_import(args.server, body, token=token, ssl_context=context, label=label)
        )
    except ClientError as exc:
        print(f"diskplane import: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER if exc.status == 0 else 1
    except KeyboardInterrupt:
        print(
            "diskplane import: stopped following; the job keeps running on the service",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
