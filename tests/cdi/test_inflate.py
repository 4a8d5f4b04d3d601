"""The resumable gzip decoder: equal to zlib, resumable at any recorded block boundary."""

from __future__ import annotations

import gzip
import io
import random
import subprocess

import pytest

from cdi.formats.inflate import GzipCheckpoint, GzipError, GzipMember


def _plain(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(50, 300)):
        parts.append(rng.randbytes(rng.randrange(1, 5000)))
        parts.append(bytes(rng.randrange(0, 20000)))
        parts.append(bytes([rng.randrange(256)]) * rng.randrange(0, 3000))
    return b"".join(parts)


def _feed(member: GzipMember, blob: bytes, start: int, rng: random.Random) -> bytes:
    out: list[bytes] = []
    offset = start
    while offset < len(blob) and not member.eof:
        step = rng.randrange(1, 100_000)
        member.push(blob[offset : offset + step], out.append)
        offset += step
    assert member.eof
    return b"".join(out)


@pytest.mark.parametrize("seed", range(6))
def test_resume_from_any_recorded_boundary_gives_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)
    plain = _plain(rng)
    blob = gzip.compress(plain, compresslevel=rng.choice([1, 6, 9]))
    member, out, offset, points = GzipMember(), [], 0, []
    while offset < len(blob) and not member.eof:
        step = rng.randrange(1, 100_000)
        member.push(blob[offset : offset + step], out.append)
        offset += step
        if member.checkpoint is not None:
            points.append(member.checkpoint)
            member.checkpoint = None
        member.want_checkpoint()
    assert b"".join(out) == plain
    assert points
    for point in rng.sample(points, min(4, len(points))):
        saved = GzipCheckpoint.from_json(point.to_json())  # as the journal keeps it
        assert saved == point
        rest = _feed(GzipMember.resume(saved), blob, point.in_offset, rng)
        assert plain[: point.out_offset] + rest == plain


def test_header_fields_written_by_the_gzip_tool_are_skipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "named disk.raw"
    plain = random.Random(1).randbytes(300_000)
    path.write_bytes(plain)
    blob = subprocess.run(["gzip", "-c", str(path)], capture_output=True, check=True).stdout
    assert blob[3] & 8  # FNAME is set
    extra = io.BytesIO()  # FEXTRA + FCOMMENT + FHCRC, written by hand
    body = gzip.compress(plain)[10:]
    header = b"\x1f\x8b\x08\x16" + bytes(6) + b"\x04\x00abcd" + b"comment\x00"
    extra.write(header + b"\x00\x00" + body)
    for data in (blob, extra.getvalue()):
        assert _feed(GzipMember(), data, 0, random.Random(2)) == plain


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda b: b[:10] + b"\xff" * 50 + b[60:], "corrupt"), (lambda b: b[:-8] + b"\0" * 8, "CRC")],
    ids=["deflate", "crc"],
)
def test_damaged_members_are_refused(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    blob = damage(gzip.compress(random.Random(3).randbytes(100_000)))
    with pytest.raises(GzipError, match=message):
        GzipMember().push(blob, lambda _data: None)
