"""Row-level operations of the embedded store; every method runs in its writer thread.

Kubernetes semantics live here: uid/creationTimestamp/generation on create,
optimistic concurrency on update, status only through ``patch_status``,
finalizers holding a deletion, and ownerReference cascade.
"""

from __future__ import annotations

import copy
import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

from controllers.api.common import now_rfc3339
from controllers.api.kinds import ALL_KINDS, ResourceKind
from controllers.errors import AlreadyExists, Conflict, Invalid, NotFound
from controllers.store.protocol import EventType, Object, WatchEvent, merge_patch

_KINDS = {str(k): k for k in ALL_KINDS}
# Fields a client may not change through update (the store owns them).
_SERVER_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "generation")
# Kinds whose status a create/update ignores (status subresource).
_NO_STATUS_SUBRESOURCE = {"events", "leases.coordination.k8s.io", "secrets"}


def _dumps(obj: Object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


class Tx:
    """Operations on one connection; the caller owns the transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.events: list[tuple[str, str, WatchEvent]] = []

    # -- reads ----------------------------------------------------------

    def counter(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def find(self, kind: str, namespace: str, name: str) -> Object | None:
        row = self.conn.execute(
            "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace, name),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def get(self, kind: ResourceKind, namespace: str, name: str) -> Object:
        found = self.find(str(kind), _ns(kind, namespace), name)
        if found is None:
            raise NotFound(f"{kind.kind} {_ns(kind, namespace)}/{name} not found")
        return found

    def snapshot(self, kind: ResourceKind, namespace: str | None) -> tuple[list[Object], int]:
        sql, args = "SELECT body FROM objects WHERE kind=?", [str(kind)]
        if namespace is not None:
            sql, args = sql + " AND namespace=?", [*args, _ns(kind, namespace)]
        rows = self.conn.execute(sql + " ORDER BY namespace, name", args).fetchall()
        return [json.loads(r[0]) for r in rows], self.counter("rv")

    def changes_since(self, since: int) -> Iterator[tuple[str, str, WatchEvent]]:
        rows = self.conn.execute(
            "SELECT kind, namespace, type, body FROM changes WHERE rv > ? ORDER BY rv", (since,)
        )
        for kind, namespace, type_, body in rows:
            yield kind, namespace, WatchEvent(EventType(type_), json.loads(body))

    # -- writes ---------------------------------------------------------

    def _next_rv(self) -> int:
        rv = self.counter("rv") + 1
        self.conn.execute(
            "INSERT INTO counters (name, value) VALUES ('rv', ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (rv,),
        )
        return rv

    def _store(self, kind: str, obj: Object, event: EventType) -> Object:
        md = obj["metadata"]
        rv = self._next_rv()
        md["resourceVersion"] = str(rv)
        body = _dumps(obj)
        self.conn.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, uid, rv, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, md.get("namespace", ""), md["name"], md["uid"], rv, body),
        )
        self.conn.execute(
            "DELETE FROM owners WHERE kind=? AND namespace=? AND name=?",
            (kind, md.get("namespace", ""), md["name"]),
        )
        for ref in md.get("ownerReferences") or []:
            self.conn.execute(
                "INSERT INTO owners (owner_uid, kind, namespace, name) VALUES (?, ?, ?, ?)",
                (ref["uid"], kind, md.get("namespace", ""), md["name"]),
            )
        self._log(rv, kind, md.get("namespace", ""), event, body, obj)
        return obj

    def _log(self, rv: int, kind: str, ns: str, event: EventType, body: str, obj: Object) -> None:
        self.conn.execute(
            "INSERT INTO changes (rv, kind, namespace, type, body) VALUES (?, ?, ?, ?, ?)",
            (rv, kind, ns, event.value, body),
        )
        self.events.append((kind, ns, WatchEvent(event, copy.deepcopy(obj))))

    def trim_log(self, keep: int) -> None:
        rv = self.counter("rv")
        if rv - self.counter("compacted") > keep + max(1, keep // 8):
            horizon = rv - keep
            self.conn.execute("DELETE FROM changes WHERE rv <= ?", (horizon,))
            self.conn.execute(
                "INSERT INTO counters (name, value) VALUES ('compacted', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (horizon,),
            )

    def create(self, kind: ResourceKind, obj: Object) -> Object:
        new = copy.deepcopy(obj)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        md = new.setdefault("metadata", {})
        md["namespace"] = _ns(kind, md.get("namespace"))
        if not md.get("name"):
            if not md.get("generateName"):
                raise Invalid(f"{kind.kind} needs metadata.name or metadata.generateName")
            md["name"] = md["generateName"] + secrets.token_hex(3)[:5]
        if self.find(str(kind), md["namespace"], md["name"]) is not None:
            raise AlreadyExists(f"{kind.kind} {md['namespace']}/{md['name']} already exists")
        for key in ("deletionTimestamp", "resourceVersion"):
            md.pop(key, None)
        md.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if str(kind) not in _NO_STATUS_SUBRESOURCE:
            new.pop("status", None)
        return self._store(str(kind), new, EventType.ADDED)

    def _current(self, kind: ResourceKind, obj: Object) -> Object:
        md = obj.get("metadata") or {}
        return self.get(kind, md.get("namespace", ""), md.get("name", ""))

    def update(self, kind: ResourceKind, obj: Object) -> Object:
        current = self._current(kind, obj)
        new = copy.deepcopy(obj)
        md, cur_md = new.setdefault("metadata", {}), current["metadata"]
        rv = md.get("resourceVersion")
        if not rv:
            raise Invalid(f"{_name(current)}: metadata.resourceVersion must be set for an update")
        if rv != cur_md["resourceVersion"]:
            raise Conflict(
                f"{_name(current)} changed since it was read (resourceVersion {rv}, "
                f"now {cur_md['resourceVersion']}); read it again and retry"
            )
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        md["namespace"] = cur_md["namespace"]
        for key in _SERVER_FIELDS:
            if key in cur_md:
                md[key] = cur_md[key]
            else:
                md.pop(key, None)
        if str(kind) not in _NO_STATUS_SUBRESOURCE:
            new.pop("status", None)
            if "status" in current:
                new["status"] = current["status"]
        if new.get("spec") != current.get("spec"):
            md["generation"] = int(cur_md.get("generation", 1)) + 1
        if new == current:
            return current
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            return self._remove(str(kind), new)
        return self._store(str(kind), new, EventType.MODIFIED)

    def patch_status(
        self, kind: ResourceKind, namespace: str, name: str, status: Object, rv: str
    ) -> Object:
        current = self.get(kind, namespace, name)
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise Conflict(
                f"{_name(current)} changed since it was read (resourceVersion {rv}, "
                f"now {current['metadata']['resourceVersion']}); read it again and retry"
            )
        new = copy.deepcopy(current)
        patched = merge_patch(current.get("status") or {}, status)
        if patched == current.get("status", {}):
            return current
        new["status"] = patched
        return self._store(str(kind), new, EventType.MODIFIED)

    def delete(self, kind: ResourceKind, namespace: str, name: str) -> Object | None:
        current = self.get(kind, namespace, name)
        md = current["metadata"]
        if md.get("finalizers"):
            if md.get("deletionTimestamp"):
                return current
            md["deletionTimestamp"] = now_rfc3339()
            return self._store(str(kind), current, EventType.MODIFIED)
        self._remove(str(kind), current)
        return None

    def _remove(self, kind: str, obj: Object) -> Object:
        md = obj["metadata"]
        ns = md.get("namespace", "")
        self.conn.execute(
            "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, ns, md["name"])
        )
        self.conn.execute(
            "DELETE FROM owners WHERE kind=? AND namespace=? AND name=?", (kind, ns, md["name"])
        )
        rv = self._next_rv()
        md["resourceVersion"] = str(rv)
        self._log(rv, kind, ns, EventType.DELETED, _dumps(obj), obj)
        self._cascade(md["uid"])
        return obj

    def _cascade(self, owner_uid: str) -> None:
        """Delete dependents left without any existing owner (background propagation)."""
        dependents = self.conn.execute(
            "SELECT kind, namespace, name FROM owners WHERE owner_uid=?", (owner_uid,)
        ).fetchall()
        for kind, ns, name in dependents:
            obj = self.find(kind, ns, name)
            if obj is None:
                continue
            owners = [r["uid"] for r in obj["metadata"].get("ownerReferences") or []]
            if any(self._uid_exists(uid) for uid in owners if uid != owner_uid):
                continue
            self.delete(_KINDS[kind], ns, name)

    def _uid_exists(self, uid: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM objects WHERE uid=?", (uid,)).fetchone()
        return row is not None


def _ns(kind: ResourceKind, namespace: Any) -> str:
    if not kind.namespaced:
        return ""
    return str(namespace or "default")


def _name(obj: Object) -> str:
    md = obj.get("metadata", {})
    where = f"{md['namespace']}/" if md.get("namespace") else ""
    return f"{obj.get('kind', 'object')} {where}{md.get('name')}"
