"""The moto S3 fixtures: uploads, ranged downloads, and enforced signatures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.s3 import S3Server


def test_starts_empty(s3_server: S3Server) -> None:
    assert s3_server.client().list_buckets()["Buckets"] == []
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_upload_download_and_ranged_get(s3_server: S3Server) -> None:
    data = os.urandom(100_000)
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "a/disk.img", data)
    assert s3_server.get_object("disks", "a/disk.img") == data
    response = s3_server.client().get_object(Bucket="disks", Key="a/disk.img", Range="bytes=10-19")
    with response["Body"] as body:
        assert body.read() == data[10:20]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert response["ContentRange"] == f"bytes 10-19/{len(data)}"


def test_big_file_goes_up_multipart(s3_server: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    data = os.urandom(20 * 1024 * 1024)
    path.write_bytes(data)
    s3_server.create_bucket("disks")
    s3_server.put_object("disks", "big.img", path)
    head = s3_server.client().head_object(Bucket="disks", Key="big.img")
    assert head["ETag"].endswith('-3"')  # three 8 MiB parts
    assert head["ContentLength"] == len(data)
    assert s3_server.get_object("disks", "big.img") == data


def test_auth_server_accepts_its_key(s3_server_auth: S3Server) -> None:
    s3_server_auth.create_bucket("private")
    s3_server_auth.put_object("private", "k", b"secret bytes")
    assert s3_server_auth.get_object("private", "k") == b"secret bytes"


@pytest.mark.parametrize(
    ("which", "code"),
    [("secret", "SignatureDoesNotMatch"), ("access-key", "InvalidAccessKeyId")],
)
def test_auth_server_rejects_a_wrong_key(s3_server_auth: S3Server, which: str, code: str) -> None:
    s3_server_auth.create_bucket("private")
    if which == "secret":
        client = s3_server_auth.client(secret_key="not-the-secret")
    else:
        client = s3_server_auth.client(access_key="AKIANOTAKEY0000000")
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket="private", Key="k")
    assert caught.value.response["Error"]["Code"] == code
