"""The Kubernetes store: the same contract against a real API server.

Why the synchronous ``kubernetes`` client and not ``kubernetes_asyncio``: it is
already a dependency (kubeconfig loading, exec/token auth, TLS set-up are its
well-trodden parts), while ``kubernetes_asyncio`` would add a second client and
its aiohttp pin. We use only its configuration loader and its urllib3 REST
transport, speak the REST paths directly (unstructured JSON, one code path for
custom and built-in kinds, exact request counts), and run every blocking call
in a bounded thread pool, never on the event loop. A watch holds one thread
that streams lines into a bounded asyncio queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import rest as k8s_rest
from kubernetes.client.exceptions import ApiException

from controllers.api.kinds import ResourceKind
from controllers.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from controllers.store.protocol import EventType, Object, ObjectList, WatchEvent

# Per-request timeouts (connect, read) in seconds.
REQUEST_TIMEOUT = (5.0, 30.0)
# A watch asks the server to end it after this long, then resumes from its bookmark.
WATCH_TIMEOUT_S = 240
# Threads for plain requests; each open watch holds one more thread of its own.
REQUEST_THREADS = 8
WATCH_THREADS = 64
WATCH_QUEUE_SIZE = 1024

_END = object()


def _translate(status: int, body: Any, what: str) -> StoreError:
    """The one place API answers become our errors."""
    message = body.get("message", "") if isinstance(body, dict) else str(body)[:500]
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    if status == 404:
        return NotFound(f"{what} not found ({message})")
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(f"{what} already exists")
    if status == 409:
        return Conflict(f"{what} changed since it was read; read it again and retry ({message})")
    if status == 410:
        return Gone(f"{what}: {message or 'resourceVersion too old'}; list again")
    if status in (400, 422):
        return Invalid(f"{what} was rejected by the API server: {message}")
    return StoreUnavailable(f"{what}: the API server answered {status}: {message}")


@dataclass(eq=False)
class _Stream:
    response: Any = None
    stopped: bool = False
    overflowed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shutdown(self) -> None:
        with self.lock:
            self.stopped = True
            if self.response is not None:
                with contextlib.suppress(Exception):
                    self.response.shutdown()


class KubernetesStore:
    """A :class:`~controllers.store.protocol.Store` on a Kubernetes API server."""

    def __init__(self, configuration: k8s_client.Configuration) -> None:
        self._config = configuration
        self._rest = k8s_rest.RESTClientObject(configuration)
        self._host = configuration.host.rstrip("/")
        self._executor = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="store-kube")
        self._watch_executor = ThreadPoolExecutor(WATCH_THREADS, thread_name_prefix="store-watch")
        self._streams: set[_Stream] = set()
        self._closed = False
        self.requests = 0  # API requests sent, for benchmarks

    @classmethod
    def from_kubeconfig(
        cls, path: str | None = None, context: str | None = None
    ) -> KubernetesStore:
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration
            )
        except (k8s_config.ConfigException, OSError) as exc:
            raise StoreUnavailable(f"kubeconfig {path or '~/.kube/config'}: {exc}") from exc
        return cls(configuration)

    @classmethod
    def in_cluster(cls) -> KubernetesStore:
        """The API server of the pod this runs in (service account token)."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException as exc:
            raise StoreUnavailable(f"not running in a Kubernetes pod: {exc}") from exc
        return cls(configuration)

    # -- HTTP ------------------------------------------------------------

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        if self._config.refresh_api_key_hook is not None:
            self._config.refresh_api_key_hook(self._config)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        bearer = self._config.auth_settings().get("BearerToken")
        if bearer:
            headers["Authorization"] = str(bearer["value"])
        return headers

    def _path(
        self, kind: ResourceKind, namespace: str | None, name: str = "", sub: str = ""
    ) -> str:
        base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        if kind.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace or 'default')}"
        path = f"{base}/{kind.plural}"
        if name:
            path += f"/{quote(name)}"
        return path + (f"/{sub}" if sub else "")

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self._host + path + (f"?{urlencode(query)}" if query else "")
        self.requests += 1
        try:
            response = self._rest.request(  # type: ignore[no-untyped-call]
                method,
                url,
                headers=self._headers(content_type),
                body=body,
                _request_timeout=REQUEST_TIMEOUT,
            )
            raw = response.read()
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise StoreUnavailable(f"{what}: the API server at {self._host} failed: {exc}") from exc
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        if not 200 <= response.status < 300:
            raise _translate(response.status, payload, what)
        return payload

    async def _run(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self._call(method, path, what, **kwargs)
        )

    # -- the Store protocol ----------------------------------------------

    async def get(self, kind: ResourceKind, namespace: str, name: str) -> Object:
        what = f"{kind.kind} {namespace}/{name}"
        result: Object = await self._run("GET", self._path(kind, namespace, name), what)
        return result

    async def list(
        self, kind: ResourceKind, namespace: str | None = None, label_selector: str = ""
    ) -> ObjectList:
        query = {"labelSelector": label_selector} if label_selector else None
        body = await self._run("GET", self._path(kind, namespace), f"{kind} list", query=query)
        items = body.get("items") or []
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return ObjectList(items, str(body["metadata"].get("resourceVersion", "")))

    async def create(self, kind: ResourceKind, obj: Object) -> Object:
        body = dict(obj, apiVersion=kind.api_version, kind=kind.kind)
        md = body.get("metadata") or {}
        namespace = md.get("namespace") or "default"
        what = f"{kind.kind} {namespace}/{md.get('name') or md.get('generateName', '')}"
        result: Object = await self._run("POST", self._path(kind, namespace), what, body=body)
        return result

    async def update(self, kind: ResourceKind, obj: Object) -> Object:
        body = dict(obj, apiVersion=kind.api_version, kind=kind.kind)
        md = body.get("metadata") or {}
        namespace, name = md.get("namespace") or "default", md.get("name", "")
        what = f"{kind.kind} {namespace}/{name}"
        result: Object = await self._run("PUT", self._path(kind, namespace, name), what, body=body)
        return result

    async def patch_status(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        status: Object,
        resource_version: str = "",
    ) -> Object:
        patch: Object = {"status": status}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        result: Object = await self._run(
            "PATCH",
            self._path(kind, namespace, name, "status"),
            f"{kind.kind} {namespace}/{name} status",
            body=patch,
            content_type="application/merge-patch+json",
        )
        return result

    async def delete(self, kind: ResourceKind, namespace: str, name: str) -> Object | None:
        what = f"{kind.kind} {namespace}/{name}"
        body = await self._run(
            "DELETE",
            self._path(kind, namespace, name),
            what,
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        pending = isinstance(body, dict) and body.get("kind") == kind.kind
        md = body.get("metadata", {}) if pending else {}
        return body if pending and md.get("deletionTimestamp") and md.get("finalizers") else None

    async def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        resource_version: str = "",
        label_selector: str = "",
    ) -> AsyncIterator[WatchEvent]:
        rv = resource_version
        while not self._closed:
            query = {
                "watch": "true",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_TIMEOUT_S),
            }
            if rv:
                query["resourceVersion"] = rv
            if label_selector:
                query["labelSelector"] = label_selector
            url = self._host + self._path(kind, namespace) + "?" + urlencode(query)
            async for raw in self._stream(url, f"watch {kind}"):
                event_type, obj = raw.get("type"), raw.get("object") or {}
                if event_type == "ERROR":
                    raise _translate(int(obj.get("code", 500)), obj, f"watch {kind}")
                rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                if event_type == "BOOKMARK":
                    continue
                yield WatchEvent(EventType(str(event_type)), obj)
            # The server ended the watch (timeout) or we fell behind: resume from rv.

    async def _stream(self, url: str, what: str) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(WATCH_QUEUE_SIZE)
        stream = _Stream()
        self._streams.add(stream)
        pump = loop.run_in_executor(
            self._watch_executor, self._pump, url, what, queue, loop, stream
        )
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, StoreError):
                    raise item
                assert isinstance(item, dict)
                yield item
        finally:
            stream.shutdown()
            self._streams.discard(stream)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, REQUEST_TIMEOUT[0])

    def _pump(
        self,
        url: str,
        what: str,
        queue: asyncio.Queue[object],
        loop: asyncio.AbstractEventLoop,
        stream: _Stream,
    ) -> None:
        """Thread: read the watch stream line by line into the loop's queue."""

        def offer(item: object) -> None:
            if stream.stopped and item is not _END:
                return
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # The consumer is behind: stop this stream and drop what it has not
                # consumed; the watch resumes from the last version it yielded.
                stream.overflowed = True
                stream.shutdown()
                if item is _END:
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(_END)

        try:
            self.requests += 1
            response = self._rest.request(  # type: ignore[no-untyped-call]
                "GET", url, headers=self._headers(), _request_timeout=(5.0, WATCH_TIMEOUT_S + 30)
            )
            with stream.lock:
                stream.response = response.response
                if stream.stopped:
                    return
            if response.status != 200:
                body = response.read()
                payload = json.loads(body) if body else {}
                loop.call_soon_threadsafe(offer, _translate(response.status, payload, what))
                return
            for line in response.response:
                if stream.stopped:
                    break
                if line.strip():
                    loop.call_soon_threadsafe(offer, json.loads(line))
        except Exception as exc:  # the stream broke: report unless we closed it
            if not stream.stopped:
                error = StoreUnavailable(f"{what}: the stream from {self._host} broke: {exc}")
                loop.call_soon_threadsafe(offer, error)
        finally:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(offer, _END)

    async def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream.shutdown()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown_executors)

    def _shutdown_executors(self) -> None:
        self._executor.shutdown(wait=True)
        self._watch_executor.shutdown(wait=True)
        self._rest.pool_manager.clear()
