"""A real S3 endpoint: moto's standalone server as a subprocess.

Fixtures (see docs/testing.md):

- ``s3_server``: accepts any key pair (moto's default);
- ``s3_server_auth``: checks SigV4 signatures. The server runs with
  ``INITIAL_NO_AUTH_ACTION_COUNT``; before each test the fixture resets moto
  and spends exactly the free calls on an IAM user, an allow-all policy and an
  access key, so only that key pair works afterwards. Presigned URLs answer
  500 on this server (a moto limitation, see host-notes §5).

Both are function-scoped views on session servers; moto is reset before each
test (no buckets left over).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tests.support.process import free_port, http_answers, start_server, stop_server

REGION = "us-east-1"
MULTIPART_SIZE = 8 * 1024 * 1024
# The IAM calls the auth fixture makes with no signature check.
FREE_IAM_CALLS = 3
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@dataclass
class S3Server:
    """Handle on a moto_server; the key pair is the one tests should use."""

    endpoint_url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = REGION
    _clients: list[Any] = field(default_factory=list, repr=False)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A new boto3 S3 client (path-style, SigV4); closed at session end."""
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )
        self._clients.append(client)
        return client

    def create_bucket(self, name: str) -> None:
        self._client().create_bucket(Bucket=name)

    def put_object(self, bucket: str, key: str, data: bytes | Path) -> None:
        """Upload ``data``; a file above 8 MiB goes up as a multipart upload."""
        if isinstance(data, bytes):
            self._client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        config = TransferConfig(
            multipart_threshold=MULTIPART_SIZE, multipart_chunksize=MULTIPART_SIZE
        )
        self._client().upload_file(str(data), bucket, key, Config=config)

    def get_object(self, bucket: str, key: str) -> bytes:
        body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
        with body:
            return bytes(body.read())

    def reset(self) -> None:
        """Forget every bucket and object (and IAM state)."""
        _post(f"{self.endpoint_url}/moto-api/reset", b"")

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def _client(self) -> Any:
        if not self._clients:
            return self.client()
        return self._clients[0]


def _post(url: str, body: bytes) -> None:
    # text/plain: a form content type would make the server parse the body away.
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextlib.contextmanager
def _moto_server(env_extra: dict[str, str]) -> Iterator[str]:
    """Run a moto_server for the session; yields its endpoint URL."""
    directory = Path(tempfile.mkdtemp(prefix="diskplane-moto-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, **env_extra}
    process = start_server(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        directory / "moto.log",
        lambda: http_answers(f"{endpoint}/moto-api/data.json"),
        env=env,
    )
    try:
        yield endpoint
    finally:
        stop_server(process)
        shutil.rmtree(directory, ignore_errors=True)


def _grant_key(server: S3Server) -> None:
    """Reset moto and spend the free calls on an IAM user with an access key."""
    server.reset()
    _post(f"{server.endpoint_url}/moto-api/reset-auth", str(FREE_IAM_CALLS).encode())
    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint_url,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        region_name=server.region,
    )
    with contextlib.closing(iam):
        iam.create_user(UserName="diskplane-test")
        iam.put_user_policy(
            UserName="diskplane-test", PolicyName="allow-all", PolicyDocument=ALLOW_ALL
        )
        key = iam.create_access_key(UserName="diskplane-test")["AccessKey"]
    server.close()  # cached clients carry the previous key pair
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def _s3_server_session() -> Iterator[S3Server]:
    with _moto_server({}) as endpoint:
        server = S3Server(endpoint)
        yield server
        server.close()


@pytest.fixture(scope="session")
def _s3_server_auth_session() -> Iterator[S3Server]:
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(FREE_IAM_CALLS)}
    with _moto_server(env) as endpoint:
        server = S3Server(endpoint)
        yield server
        server.close()


@pytest.fixture
def s3_server(_s3_server_session: S3Server) -> S3Server:
    """moto S3 accepting any key pair; emptied for this test."""
    _s3_server_session.reset()
    return _s3_server_session


@pytest.fixture
def s3_server_auth(_s3_server_auth_session: S3Server) -> S3Server:
    """moto S3 checking signatures against ``.access_key``/``.secret_key``."""
    _grant_key(_s3_server_auth_session)
    return _s3_server_auth_session
