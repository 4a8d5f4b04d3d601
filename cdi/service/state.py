"""The service's parts, owned together and reachable from every handler."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from aiohttp import web

from cdi.service.events import EventHub
from cdi.service.metrics import ServiceMetrics
from cdi.service.model import VolumeRef
from cdi.service.scheduler import JobScheduler
from cdi.service.schema import JsonObject
from cdi.service.settings import ServiceSettings
from cdi.service.store import JobStore
from cdi.service.tokens import UploadTokens
from cdi.service.uploads import UploadStaging

log = logging.getLogger(__name__)


@dataclass
class ImporterService:
    settings: ServiceSettings
    store: JobStore
    scheduler: JobScheduler
    tokens: UploadTokens
    staging: UploadStaging
    metrics: ServiceMetrics
    events: EventHub

    def issue_upload_token(self, body: JsonObject) -> JsonObject:
        target = VolumeRef(body["target"]["namespace"], body["target"]["name"])
        ttl = min(
            int(body.get("ttlSeconds", self.settings.upload_token_ttl_seconds)),
            self.settings.upload_token_max_ttl_seconds,
        )
        token, expires = self.tokens.issue(target, ttl)
        log.info("issued an upload token for volume %s, valid %d s", target, ttl)
        expires_at = datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat()
        return {"token": token, "expiresAt": expires_at, "target": target.to_json()}


SERVICE = web.AppKey("importer_service", ImporterService)
