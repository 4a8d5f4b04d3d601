"""The public surface and the pure helpers: names, sizes, checksums, detection, progress."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

import cdi
from cdi import (
    Checksum,
    Credentials,
    InvalidRequest,
    MiB,
    Progress,
    SourceSpec,
    VolumeExists,
    VolumeNotFound,
    VolumePool,
    parse_quantity,
    usable_size,
)
from cdi.checksum import StreamHasher
from cdi.formats.detect import detect_compression, detect_format
from cdi.journal import Journal
from cdi.sources.base import redact_url
from cdi.sources.s3 import parse_s3_url

EXPECTED_ALL = {
    "AuthFailed", "Checksum", "ChecksumMismatch", "ConversionFailed", "Credentials",
    "FinalImportError", "GiB", "ImageTooLarge", "ImportError", "ImportRequest", "ImportResult",
    "ImportSettings", "InvalidImage", "InvalidRequest", "KiB", "MiB", "Progress",
    "ProgressCallback", "RetryableImportError", "SourceChanged", "SourceNotFound", "SourceSpec",
    "SourceUnavailable", "TransferStalled", "UnsafeImage", "UnsupportedFormat", "Volume",
    "VolumeBusy", "VolumeError", "VolumeExists", "VolumeNotFound", "VolumePool",
    "parse_quantity", "run_import", "usable_size",
}  # fmt: skip


def test_public_surface_is_pinned() -> None:
    assert set(cdi.__all__) == EXPECTED_ALL


def test_error_tree() -> None:
    assert issubclass(cdi.SourceUnavailable, cdi.RetryableImportError)
    for final in (cdi.ChecksumMismatch, cdi.UnsafeImage, cdi.ImageTooLarge, cdi.SourceNotFound):
        assert issubclass(final, cdi.FinalImportError)
    assert issubclass(cdi.RetryableImportError, cdi.ImportError)


@pytest.mark.parametrize(
    ("capacity", "overhead", "usable"),
    [
        (10 * 1024 * MiB, 0.06, 9625 * MiB),
        (100 * MiB, 0.06, 94 * MiB),
        (100 * MiB, 0.0, 100 * MiB),
        (MiB + 5, 0.0, MiB),
    ],
)
def test_usable_size_rounds_down_to_mib(capacity: int, overhead: float, usable: int) -> None:
    assert usable_size(capacity, overhead) == usable


@pytest.mark.parametrize("name", ["", "UPPER", "a_b", "-a", "a-", "a/b", "..", "x" * 64])
def test_volume_names_are_dns1123(pool: VolumePool, name: str) -> None:
    with pytest.raises(InvalidRequest, match="DNS-1123"):
        pool.create("default", name, 10 * MiB)


def test_pool_create_get_list_delete(pool: VolumePool) -> None:
    vol = pool.create("ns", "disk", 100 * MiB)
    assert vol.directory == pool.root / "ns" / "disk"
    assert vol.disk_path == vol.directory / "disk.img"
    assert vol.usable_size == 94 * MiB
    assert vol.state() == "Empty"
    assert pool.create("ns", "disk", 100 * MiB) == vol
    with pytest.raises(VolumeExists):
        pool.create("ns", "disk", 200 * MiB)
    assert pool.list() == [vol]
    pool.delete("ns", "disk")
    with pytest.raises(VolumeNotFound):
        pool.get("ns", "disk")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("sha256:" + "a" * 64, True),
        ("SHA256:" + "a" * 64, False),
        ("sha512:" + "b" * 128, True),
        ("sha1:" + "c" * 40, True),
        ("md5:" + "d" * 32, True),
        ("sha256:abc", False),
        ("crc32:" + "a" * 8, False),
        ("a" * 64, False),
    ],
)
def test_checksum_syntax(text: str, ok: bool) -> None:
    if ok:
        assert str(Checksum.parse(text)) == text.lower()
    else:
        with pytest.raises(InvalidRequest):
            Checksum.parse(text)


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_hash_state_survives_a_journal_round_trip(algorithm: str, tmp_path: Path) -> None:
    data = os.urandom(1_000_003)
    expected = hashlib.new(algorithm, data).hexdigest()
    first = StreamHasher(Checksum(algorithm, expected))
    assert first.resumable  # libcrypto's Init/Update/Final are there on Debian 12
    first.update(data[:70_001])
    first.update(bytearray(data[70_001:400_000]))
    journal = Journal(tmp_path / "j.json", {"k": 1}, [(0, 400_000)], first.snapshot())
    journal.save()
    saved = Journal.load(tmp_path / "j.json", {"k": 1})
    assert saved is not None
    assert saved.hash is not None
    second = StreamHasher(Checksum(algorithm, expected))
    assert second.restore(saved.hash)
    assert second.bytes_hashed == 400_000
    second.update(memoryview(data)[400_000:])
    assert second.verify("the image").hexdigest == expected
    other = StreamHasher(Checksum("sha256" if algorithm != "sha256" else "md5", "0" * 64))
    assert not other.restore(saved.hash)  # another algorithm's state is not used


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"QFI\xfb" + bytes(100), "qcow2"),
        (b"KDMV" + bytes(100), "vmdk"),
        (b"# Disk DescriptorFile\n", "vmdk"),
        (bytes(0x40) + b"\x7f\x10\xda\xbe", "vdi"),
        (b"conectix" + bytes(100), "vpc"),
        (b"vhdxfile" + bytes(100), "vhdx"),
        (bytes(0x8001) + b"CD001", "iso"),
        (b"disk.qcow2 is just a name", "raw"),
    ],
)
def test_format_by_magic(head: bytes, fmt: str) -> None:
    assert detect_format(head) == fmt


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08", "gz"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zst"),
        (b"BZh9", "bz2"),
        (b"BZhx", None),
        (b"QFI\xfb", None),
    ],
)
def test_compression_by_magic(head: bytes, kind: str | None) -> None:
    assert detect_compression(head) == kind


def test_progress_strings() -> None:
    assert Progress("transfer", 45, 100).cdi_progress == "45.00%"
    assert Progress("transfer", 45, None).cdi_progress == "N/A"
    assert Progress("done", 10, 100).cdi_progress == "100.0%"
    # A server sending more than announced never shows more than 100 %.
    assert Progress("transfer", 150, 100).percent == 100.0


def test_journal_merges_and_matches_identity(tmp_path: Path) -> None:
    identity: dict[str, object] = {"source": "x", "validator": "etag:1"}
    journal = Journal(tmp_path / "j.json", identity)
    for start, end in [(10, 20), (0, 10), (30, 40)]:
        journal.add(start, end)
    assert journal.done == [(0, 20), (30, 40)]
    journal.save()
    again = Journal.load(tmp_path / "j.json", identity)
    assert again is not None
    assert again.contains(5, 15)
    assert not again.contains(15, 35)
    assert Journal.load(tmp_path / "j.json", {**identity, "validator": "etag:2"}) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host:8443/a/b.img?X-Amz-Signature=abc", "https://host:8443/a/b.img?…"),
        ("http://host/x.qcow2", "http://host/x.qcow2"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_s3_url_forms() -> None:
    loc = parse_s3_url("http://127.0.0.1:9000/bucket/dir/disk.img", None, None)
    assert (loc.bucket, loc.key, loc.endpoint_url) == (
        "bucket",
        "dir/disk.img",
        "http://127.0.0.1:9000",
    )
    loc = parse_s3_url("s3://bucket/disk.img", "http://minio:9000", "eu-1")
    assert (loc.bucket, loc.key, loc.endpoint_url, loc.region) == (
        "bucket", "disk.img", "http://minio:9000", "eu-1",
    )  # fmt: skip
    loc = parse_s3_url("https://bkt.s3.us-west-2.amazonaws.com/k/d.img", None, None)
    assert (loc.bucket, loc.key, loc.endpoint_url, loc.region) == (
        "bkt",
        "k/d.img",
        None,
        "us-west-2",
    )
    with pytest.raises(InvalidRequest):
        parse_s3_url("s3://bucket", None, None)


def test_secret_file_forms(tmp_path: Path) -> None:
    k8s = {
        "apiVersion": "v1",
        "kind": "Secret",
        "data": {
            "accessKeyId": base64.b64encode(b"AKIA").decode(),
            "secretKey": base64.b64encode(b"s3cr3t").decode(),
        },
    }
    (tmp_path / "k8s.json").write_text(json.dumps(k8s))
    creds = Credentials.from_secret_file(tmp_path / "k8s.json")
    assert (creds.access_key_id, creds.secret_key) == ("AKIA", "s3cr3t")
    assert creds.basic() == ("AKIA", "s3cr3t")
    assert "s3cr3t" not in repr(creds)
    (tmp_path / "flat.yaml").write_text("stringData:\n  username: u\n  password: p\n")
    assert Credentials.from_secret_file(tmp_path / "flat.yaml").basic() == ("u", "p")


def test_source_spec_from_cdi_shape() -> None:
    spec = SourceSpec.from_cdi(
        {
            "http": {
                "url": "https://example.com/disk.qcow2",
                "extraHeaders": ["X-Token: abc"],
                "checksum": "sha256:" + "0" * 64,
                "insecureSkipVerify": True,
            }
        }
    )
    assert spec.kind == "http"
    assert spec.extra_headers == (("X-Token", "abc"),)
    assert spec.insecure_skip_verify
    assert SourceSpec.from_cdi({"blank": {}}).kind == "blank"
    with pytest.raises(InvalidRequest):
        SourceSpec.from_cdi({"http": {"url": "x"}, "blank": {}})


@pytest.mark.parametrize(
    ("text", "size"), [("10Gi", 10 << 30), ("512Mi", 512 << 20), ("1G", 10**9), ("4096", 4096)]
)
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size
