"""Registry source (``docker://``): not wired yet."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from cdi.errors import InvalidRequest
from cdi.request import SourceSpec
from cdi.settings import ImportSettings
from cdi.sources.base import SourceInfo


class RegistrySource:
    def __init__(self, spec: SourceSpec, settings: ImportSettings) -> None:
        self.description = spec.url or "registry"
        self._settings = settings

    async def probe(self) -> SourceInfo:
        raise InvalidRequest("registry sources are not supported yet")

    async def stream(self, start: int, end: int | None) -> AsyncGenerator[bytes, None]:
        raise InvalidRequest("registry sources are not supported yet")
        yield b""

    async def aclose(self) -> None:
        return None
