"""Upload tokens: HMAC-SHA256 signed, scoped to one target volume, with an expiry.

Format: ``dpu1.<base64url payload>.<base64url signature>``, payload
``{"vol": "ns/name", "exp": <unix seconds>, "nonce": <hex>}``. The key is 32
random bytes in ``<state_dir>/upload-token.key`` (mode 0600), made on first
start; deleting it revokes every token. Tokens are never logged: the
service only ever logs the volume a token was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from cdi.service.errors import AuthError, AuthForbidden
from cdi.service.model import VolumeRef

PREFIX = "dpu1"
KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """The signing key; created atomically with mode 0600 when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
    else:
        key = secrets.token_bytes(KEY_BYTES)
        with os.fdopen(fd, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
    if len(key) != KEY_BYTES:
        raise AuthError(f"upload token key {path} is damaged; delete it to make a new one")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(
        self, volume: VolumeRef, ttl_seconds: int, now: float | None = None
    ) -> tuple[str, int]:
        """A token for ``volume`` and its expiry (unix seconds)."""
        expires = int((time.time() if now is None else now) + ttl_seconds)
        body = {"vol": str(volume), "exp": expires, "nonce": secrets.token_hex(8)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{PREFIX}.{payload}.{self._sign(payload)}", expires

    def verify(self, authorization: str | None, volume: VolumeRef) -> None:
        """Check an ``Authorization: Bearer`` header against ``volume``.

        Raises :class:`AuthError` (401) for a missing, malformed, forged or
        expired token and :class:`AuthForbidden` (403) for another volume's.
        """
        if not authorization:
            raise AuthError(f"uploading to volume {volume} needs an upload token")
        scheme, _, token = authorization.partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != PREFIX:
            raise AuthError("the upload token is malformed")
        if not hmac.compare_digest(self._sign(parts[1]), parts[2]):
            raise AuthError("the upload token's signature does not match")
        try:
            body = json.loads(_unb64(parts[1]))
            expires = int(body["exp"])
            scope = str(body["vol"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError("the upload token is malformed") from exc
        if expires <= time.time():
            raise AuthError("the upload token has expired; ask for a new one")
        if scope != str(volume):
            raise AuthForbidden(f"the upload token is for another volume, not {volume}")
