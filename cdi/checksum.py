"""CDI checksum syntax (``sha256:<hex>``) and an inline hasher fed as bytes stream.

A hash whose state can be saved lets a checksummed import resume after a
kill without fetching again what it already hashed. hashlib objects cannot
be serialised, so where the system's libcrypto offers the classic
``<ALG>_Init/Update/Final`` calls (OpenSSL 3 still exports them), the hasher
drives those through ctypes on a context buffer it owns: the same OpenSSL
code hashlib runs, with a state that is a few hundred bytes to journal.
Without them the hasher is hashlib and simply not resumable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

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


_CONTEXT_BYTES = 512  # larger than any of the four OpenSSL *_CTX structs (<= 216 bytes)
_DIGEST_BYTES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
_PREFIX = {"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512"}
Buffer = bytes | bytearray | memoryview


class _Hash(Protocol):
    def update(self, data: Buffer, /) -> None: ...

    def hexdigest(self) -> str: ...


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is None or not all(hasattr(lib, f"{p}_Update") for p in _PREFIX.values()):
        return None
    for prefix in _PREFIX.values():
        getattr(lib, f"{prefix}_Init").argtypes = [ctypes.c_void_p]
        getattr(lib, f"{prefix}_Update").argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
        ]  # fmt: skip
        getattr(lib, f"{prefix}_Final").argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


class _SavableHash:
    """One libcrypto hash context in a buffer we own (so its bytes can be saved)."""

    def __init__(self, lib: ctypes.CDLL, algorithm: str, state: bytes | None = None) -> None:
        prefix = _PREFIX[algorithm]
        self._update = getattr(lib, f"{prefix}_Update")
        self._final = getattr(lib, f"{prefix}_Final")
        self._digest_bytes = _DIGEST_BYTES[algorithm]
        self._ctx = ctypes.create_string_buffer(_CONTEXT_BYTES)
        if state is None:
            if getattr(lib, f"{prefix}_Init")(self._ctx) != 1:
                raise RuntimeError(f"libcrypto {prefix}_Init failed")
        else:
            ctypes.memmove(self._ctx, state, _CONTEXT_BYTES)

    def update(self, data: Buffer, /) -> None:
        if isinstance(data, memoryview) and data.readonly:
            data = bytes(data)  # ctypes cannot point into a read-only view
        if isinstance(data, bytes):
            self._update(self._ctx, data, len(data))  # ctypes passes bytes without a copy
            return
        view = memoryview(data).cast("B")
        if view.nbytes:
            c_buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
            self._update(self._ctx, c_buffer, view.nbytes)

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CONTEXT_BYTES)  # Final consumes it
        out = ctypes.create_string_buffer(self._digest_bytes)
        self._final(out, ctx)
        return out.raw.hex()


def _new_hash(algorithm: str, state: bytes | None = None) -> _Hash:
    lib = _libcrypto()
    if lib is None:
        return hashlib.new(algorithm)
    return _SavableHash(lib, algorithm, state)


@dataclass(frozen=True)
class HashState:
    """A hash's state after its first ``bytes_hashed`` source bytes (see StreamHasher)."""

    algorithm: str
    bytes_hashed: int
    context: bytes


class StreamHasher:
    """Hashes source bytes in order as they arrive; ``verify`` raises on mismatch."""

    def __init__(self, expected: Checksum) -> None:
        self.expected = expected
        self._hash = _new_hash(expected.algorithm)
        self.bytes_hashed = 0

    @property
    def resumable(self) -> bool:
        """Whether ``snapshot``/``restore`` work (libcrypto was found)."""
        return isinstance(self._hash, _SavableHash)

    def update(self, data: Buffer) -> None:
        self._hash.update(data)
        self.bytes_hashed += len(data)

    def reset(self) -> None:
        self._hash = _new_hash(self.expected.algorithm)
        self.bytes_hashed = 0

    def snapshot(self) -> HashState | None:
        """The state after ``bytes_hashed`` bytes, for a journal; None if not resumable."""
        if not isinstance(self._hash, _SavableHash):
            return None
        return HashState(self.expected.algorithm, self.bytes_hashed, self._hash.state())

    def restore(self, state: HashState) -> bool:
        """Continue from a snapshot of the same algorithm; False if it cannot be used."""
        lib = _libcrypto()
        if lib is None or state.algorithm != self.expected.algorithm:
            return False
        if len(state.context) != _CONTEXT_BYTES:
            return False
        self._hash = _SavableHash(lib, state.algorithm, state.context)
        self.bytes_hashed = state.bytes_hashed
        return True

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
