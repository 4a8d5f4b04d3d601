"""Registry credentials and the ``WWW-Authenticate`` challenge flow.

Credentials come from explicit options (username/password or a bearer
token), else from a Docker-config-style file (``auths.<host>.auth`` =
base64 ``user:pass``, or ``username``/``password``, or ``identitytoken``):
``--authfile``, then ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``. Credential helpers
(``credHelpers``/``credsStore``) are not run.

A 401 names the scheme: ``Basic`` makes us send the credentials pre-emptively
from then on (so a large upload is never the request that learns about auth);
``Bearer`` sends us to the token realm for the scope, and the token is cached
per (realm, service, scope) until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from containerdisk.errors import AuthenticationFailed
from containerdisk.reference import DOCKER_HUB

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
DEFAULT_TOKEN_LIFETIME = 60.0
TOKEN_EXPIRY_MARGIN = 10.0


@dataclass(frozen=True)
class Credentials:
    """What we authenticate with; ``repr`` never shows the secret."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # a registry bearer token, sent as is
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.token or self.identity_token)

    def basic_header(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def default_auth_files() -> list[Path]:
    out: list[Path] = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env))
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(runtime) / "containers" / "auth.json")
    if docker := os.environ.get("DOCKER_CONFIG"):
        out.append(Path(docker) / "config.json")
    out.append(Path.home() / ".docker" / "config.json")
    return out


def _host_keys(registry: str) -> list[str]:
    keys = [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v1/",
        f"https://{registry}/v2/",
    ]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def credentials_from_file(path: Path, registry: str) -> Credentials | None:
    """The credentials a Docker-style config file holds for ``registry``, if any."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthenticationFailed(
            f"auth file {path} cannot be read as JSON ({type(exc).__name__})"
        ) from exc
    auths = obj.get("auths") if isinstance(obj, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in _host_keys(registry):
        entry = auths.get(key)
        if isinstance(entry, dict):
            return _entry_credentials(entry, path, registry)
    return None


def _entry_credentials(entry: dict[str, object], path: Path, registry: str) -> Credentials:
    if token := entry.get("identitytoken"):
        return Credentials(identity_token=str(token))
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthenticationFailed(
                f"auth file {path} has a malformed entry for {registry}"
            ) from exc
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    return Credentials(str(name) if name else None, str(secret) if secret else None)


def resolve_credentials(
    registry: str, explicit: Credentials, auth_file: Path | None
) -> Credentials:
    """Explicit options win, then the named auth file, then the default files."""
    if not explicit.empty:
        return explicit
    files = [auth_file] if auth_file is not None else default_auth_files()
    for path in files:
        found = credentials_from_file(path, registry)
        if found is not None:
            return found
    return Credentials()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> (``bearer``, params)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


@dataclass
class _Token:
    value: str
    expires: float


TokenFetcher = Callable[[str, list[tuple[str, str]], Credentials], Awaitable[tuple[str, float]]]


class Authenticator:
    """Per-registry auth state: which scheme it wants and the tokens we hold."""

    def __init__(self, registry: str, credentials: Credentials, fetch_token: TokenFetcher) -> None:
        self.registry = registry
        self.credentials = credentials
        self._fetch_token = fetch_token
        self._scheme: str | None = None
        self._bearer: dict[str, str] = {}
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    def header(self, scope: str) -> str | None:
        """The Authorization header to send pre-emptively for ``scope``, if we know one."""
        if self._scheme == "basic":
            return self.credentials.basic_header()
        if self._scheme == "bearer":
            key = (self._bearer.get("realm", ""), self._bearer.get("service", ""), scope)
            token = self._tokens.get(key)
            if token and token.expires > time.monotonic():
                return f"Bearer {token.value}"
        return None

    def learn(self, challenge: str | None) -> None:
        """Remember the scheme a /v2/ ping announced; tokens come per scope, later."""
        if not challenge:
            return
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            self._scheme = "basic"
        elif scheme == "bearer" and "realm" in params:
            self._scheme, self._bearer = "bearer", params

    async def prepare(self, scope: str) -> None:
        """With a known Bearer realm, fetch the scope's token before the request needs it."""
        if self._scheme == "bearer" and scope and self.header(scope) is None:
            async with self._fetching.setdefault(scope, asyncio.Lock()):
                if self.header(scope) is None:  # another task may have fetched it meanwhile
                    await self._fetch(scope)

    async def _fetch(self, scope: str) -> None:
        params = self._bearer
        key = (params["realm"], params.get("service", ""), scope)
        query = [("service", params.get("service", ""))]
        query += [("scope", one) for one in scope.split()]
        value, lifetime = await self._fetch_token(params["realm"], query, self.credentials)
        margin = min(TOKEN_EXPIRY_MARGIN, lifetime / 2)
        self._tokens[key] = _Token(value, time.monotonic() + lifetime - margin)

    async def answer(self, challenge: str | None, scope: str) -> bool:
        """Learn from a 401; True when a retry with new credentials makes sense."""
        if not challenge:
            return False
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            already = self._scheme == "basic"
            self._scheme = "basic"
            return not already and self.credentials.basic_header() is not None
        if scheme != "bearer" or "realm" not in params:
            return False
        self._scheme, self._bearer = "bearer", params
        await self._fetch(scope)
        return True
