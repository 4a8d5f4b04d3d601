"""Image references: ``[docker://][registry[:port]/]repository[:tag][@sha256:hex]``.

Docker's rules: the first path component is a registry when it contains a
``.`` or a ``:`` or is ``localhost``; otherwise the reference is on Docker
Hub, whose one-component repositories live under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from containerdisk.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
_HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference; ``str()`` gives it back in canonical form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text``; a reference with neither tag nor digest gets ``latest``."""
        raw = text.strip()
        if raw.startswith("docker://"):
            raw = raw[len("docker://") :]
        if not raw or "://" in raw:
            raise InvalidReference(f"image reference {text!r} is not [registry/]repo[:tag]")
        name, digest = _split_digest(text, raw)
        registry, rest = _split_registry(name)
        repository, tag = _split_tag(rest)
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        if not _REPOSITORY_RE.match(repository):
            raise InvalidReference(
                f"image reference {text!r} has an invalid repository name {repository!r}"
                " (lowercase letters, digits and separators only)"
            )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def api_host(self) -> str:
        """The host:port the registry API answers on (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def is_local(self) -> bool:
        """Whether the registry is this machine, where plain HTTP is allowed without a flag."""
        return _hostname(self.registry) in _LOCAL_HOSTS

    @property
    def selector(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, the tag otherwise."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag``, unpinned."""
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_digest(text: str, raw: str) -> tuple[str, str | None]:
    if "@" not in raw:
        return raw, None
    name, digest = raw.rsplit("@", 1)
    if not _DIGEST_RE.match(digest):
        raise InvalidReference(f"image reference {text!r} has an invalid digest {digest!r}")
    return name, digest


def _split_registry(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST_RE.match(first):
            raise InvalidReference(f"image reference {name!r} has an invalid registry {first!r}")
        if first in ("index.docker.io", DOCKER_HUB_API_HOST):
            first = DOCKER_HUB
        return first, rest
    return DOCKER_HUB, name


def _split_tag(rest: str) -> tuple[str, str | None]:
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= last_slash:
        return rest, None
    repository, tag = rest[:colon], rest[colon + 1 :]
    if not _TAG_RE.match(tag):
        raise InvalidReference(f"image reference {rest!r} has an invalid tag {tag!r}")
    return repository, tag


def _hostname(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry
