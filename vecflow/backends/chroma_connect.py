"""Opening a Chroma client from a store section: embedded (`path`) or a server (`url`, `headers`,
`tenant`, `database`), with one-line errors naming the store; and telling a damaged store apart.

A damaged store (measured on chromadb 1.5.9): chromadb saves a collection's HNSW index in place,
file by file and without fsync (header, data_level0.bin, length.bin, link_lists.bin), then its id
map (index_metadata.pickle), then, in SQLite, the log position the index holds (max_seq_id). A
process killed inside that save leaves index files that already hold changes the id map and the
log position do not know of. On the next open chromadb replays its write-ahead log from that
position onto those files; a replayed delete of an element the saved index already marks deleted
makes hnswlib throw ("already deleted"), and every read that needs the index then fails with
`Failed to apply logs to the hnsw segment writer`. A second try in the same process "succeeds":
the first one had already changed the id map in memory before it failed, so the index then lacks
vectors it should hold (`Error getting embedding`, records queries never find), which is what
chroma-core/chroma#7678 reports; #7510 and #7238 are other shapes of the same torn save. The
pattern cannot be avoided from outside (any delete can be the replayed one), so vecflow looks for
it when it first uses a collection and stops with `DamagedStoreError`, which is never retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import chromadb
import httpx
from chromadb.api.client import Client, SharedSystemClient
from chromadb.errors import ChromaError

from vecflow.backends.helpers import one_line, redacted, root_cause
from vecflow.errors import BackendError, ConfigError, DamagedStoreError, VecflowError

FAILURES = (ChromaError, ValueError, TypeError, httpx.HTTPError, OSError)
# What chromadb says when it cannot bring a collection's segments up to its own log.
DAMAGE_SIGNS = ("failed to apply logs to the hnsw segment", "failed to apply logs to the metadata segment",
                "error loading hnsw index", "error constructing hnsw segment reader",
                "error creating hnsw segment reader", "error getting embedding")


def damage(exc: BaseException, where: str, action: str, scope: str) -> DamagedStoreError | None:
    """The DamagedStoreError for a chromadb failure that shows a damaged store, else None."""
    text = one_line(exc)
    if not any(sign in text.lower() for sign in DAMAGE_SIGNS):
        return None
    return DamagedStoreError(
        f"Chroma store {where} is damaged ({action}): chromadb cannot apply its own write-ahead log to "
        f"the collection's index ({text}), which a process killed while chromadb saved the index leaves "
        "behind (chroma-core/chroma#7678); vecflow stopped before writing more, as retrying would hide "
        "lost vectors. Restore the folder from a backup, or drop the collection and load it again from "
        "its source", scope, reason="chromadb cannot read its index: a process was killed while chromadb "
        "saved it, chroma-core/chroma#7678")


def connect(path: str | None, url: str | None, tenant: str | None, database: str | None,
            headers: dict[str, str] | str | None) -> tuple[Any, str]:
    """An open, answering chromadb client and the store's location (for messages and state
    scopes: tenant and database are part of it, so two databases never share state)."""
    if bool(path) == bool(url):
        raise ConfigError("chroma store: set exactly one of 'path' (embedded) or 'url' (server)")
    if headers and not url:
        raise ConfigError("chroma store: 'headers' only applies to a server ('url')")
    if path:
        # chromadb shares one client system per path string: spell each folder one way.
        path = os.path.abspath(os.path.expanduser(path))
    where = location(path or redacted(url), tenant, database)
    scope = {k: v for k, v in (("tenant", tenant), ("database", database)) if v}
    client: Any = None
    try:
        if path:
            client = chromadb.PersistentClient(path=path, **scope)
        else:
            client = chromadb.HttpClient(host=_check_url(url), ssl=url.startswith("https:"),
                                         headers=_parse_headers(headers), **scope)
        client.heartbeat()
        return client, where
    except VecflowError:
        raise
    except FAILURES as exc:
        if client is not None:
            release(client)
        root = root_cause(exc)
        if url and isinstance(root, (httpx.TransportError, OSError)):
            raise BackendError(f"cannot reach Chroma at {redacted(url)}: {one_line(root)}") from exc
        named = (f"{path or redacted(url)} (tenant {tenant or 'default_tenant'!r}, "
                 f"database {database or 'default_database'!r})")
        raise BackendError(f"cannot open Chroma at {named}: {one_line(exc)}") from exc


def location(where: str, tenant: str | None, database: str | None) -> str:
    named = [f"{kind} {value!r}" for kind, value, default in (("tenant", tenant, "default_tenant"),
                                                              ("database", database, "default_database"))
             if value and value != default]
    return f"{where} ({', '.join(named)})" if named else where


def _check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"chroma store: url must look like http://host:port, got {url!r}")
    return url


def _parse_headers(headers: dict[str, str] | str | None) -> dict[str, str] | None:
    """Headers as a dict, or as 'Name: value' lines (as vecflow.ini gives them)."""
    if not headers or isinstance(headers, dict):
        return dict(headers) if headers else None
    pairs = [line.split(":", 1) for line in headers.strip().splitlines() if line.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError("chroma store: write headers as 'Name: value' lines, one per line")
    return {name.strip(): value.strip() for name, value in pairs}


# vecflow's store marker (runtime/markers.py) lives in a Chroma database of its own in the store's
# tenant, so the application's client, bound to its database, never lists it: one collection per
# marked database, the text in that collection's metadata.
MARKER_DATABASE = "vecflow"
_MARKER_KEY = "vecflow_marker"


def _marker_client(client: Any, create: bool) -> Any | None:
    tenant = client.tenant
    with _admin(client) as admin:
        try:
            admin.get_database(MARKER_DATABASE, tenant=tenant)
        except ChromaError:
            if not create:
                return None
            try:
                admin.create_database(MARKER_DATABASE, tenant=tenant)
            except ChromaError:  # another runner created it a moment ago
                admin.get_database(MARKER_DATABASE, tenant=tenant)
    return chromadb.Client(client.get_settings(), tenant=tenant, database=MARKER_DATABASE)


@contextlib.contextmanager
def _admin(client: Any) -> Iterator[Any]:
    """An AdminClient on the client's settings, released after use (see release)."""
    admin = chromadb.AdminClient(client.get_settings())
    try:
        yield admin
    finally:
        release(admin)


def release(client: Any) -> None:
    """Close a chromadb Client or AdminClient for good. chromadb 1.5.9's AdminClient has no close()
    and holds a reference to the shared system of its settings, which keeps an embedded store's files
    open after its last client closed (a later connection then reads stale state); and close() stops a
    server client's systems but leaves their httpx connection pools open and the systems referenced
    (chroma-core/chroma#2702), so each connection to a server would keep its sockets for the life of
    the process."""
    servers = [client._server]
    if isinstance(client, Client):
        servers.append(client._admin_client._server)
        client.close()
    else:
        SharedSystemClient._release_system(client._identifier)
    for server in servers:
        session = getattr(server, "_session", None)  # a server's HTTP API; an embedded store has none
        if session is not None:
            session.close()


def _marker_collection(client: Any) -> str:
    return "db-" + hashlib.sha256(client.database.encode()).hexdigest()[:24]


def read_marker(client: Any) -> str | None:
    marker = _marker_client(client, create=False)
    if marker is None:
        return None
    try:
        found = [c for c in marker.list_collections() if c.name == _marker_collection(client)]
        return (found[0].metadata or {}).get(_MARKER_KEY) if found else None
    finally:
        release(marker)


def write_marker(client: Any, text: str) -> None:
    marker = _marker_client(client, create=True)
    try:
        collection = marker.get_or_create_collection(_marker_collection(client), embedding_function=None)
        collection.modify(metadata={_MARKER_KEY: text})
    finally:
        release(marker)
