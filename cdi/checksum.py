"""CDI checksum syntax (``sha256:<hex>``) and an inline hasher fed as bytes stream."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from cdi.errors import ChecksumMismatch, InvalidRequest

ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_SYNTAX = re.compile(r"^(md5|sha1|sha256|sha512):([0-9a-fA-F]+)$")


@dataclass(frozen=True)
class Checksum:
    """An expected digest, e.g. ``Checksum.parse("sha256:ab12...")``."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        match = _SYNTAX.match(text.strip())
        if not match:
            raise InvalidRequest(
                f"checksum {text!r} is not '<algorithm>:<hex>' with algorithm "
                f"one of {', '.join(sorted(ALGORITHMS))}"
            )
        algorithm, digest = match.group(1), match.group(2).lower()
        if len(digest) != ALGORITHMS[algorithm]:
            raise InvalidRequest(
                f"checksum {algorithm}:{digest} has {len(digest)} hex digits, "
                f"{algorithm} needs {ALGORITHMS[algorithm]}"
            )
        return cls(algorithm, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


class StreamHasher:
    """Hashes source bytes in order as they arrive; ``verify`` raises on mismatch."""

    def __init__(self, expected: Checksum) -> None:
        self.expected = expected
        self._hash = hashlib.new(expected.algorithm)
        self.bytes_hashed = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.bytes_hashed += len(data)

    def reset(self) -> None:
        self._hash = hashlib.new(self.expected.algorithm)
        self.bytes_hashed = 0

    def actual(self) -> Checksum:
        return Checksum(self.expected.algorithm, self._hash.hexdigest())

    def verify(self, what: str) -> Checksum:
        actual = self.actual()
        if not hmac.compare_digest(actual.hexdigest, self.expected.hexdigest):
            raise ChecksumMismatch(
                f"checksum of {what} is {actual}, expected {self.expected}; "
                "the source is corrupt or the checksum is wrong"
            )
        return actual
