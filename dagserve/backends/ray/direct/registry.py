"""Where replicas on other Ray nodes listen: entries in Ray's internal key-value store.

A replica that listens for cross-node calls puts one entry (its application, deployment,
replica id, Ray node id and TCP address) in the GCS's key-value store, namespace ``dagserve``,
and removes it when it stops; a caller lists a deployment's entries and connects to those on
other Ray nodes. The store is Ray's own: reading or writing it takes the cluster's token when
token authentication is on (as it must be for the cross-node transport), so no file or port of
dagserve's own announces addresses. Every field is part of the key (one listing per scan, no
read per replica). Blocking calls to the GCS: run them off the event loop.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

__all__ = ["Entry", "forget", "listing", "register"]

_NAMESPACE = "dagserve"
_PREFIX = "direct|"


@dataclass(frozen=True)
class Entry:
    """One replica's cross-node address."""

    replica: str
    node_id: str
    host: str
    port: int


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _prefix(app: str, deployment: str) -> str:
    return f"{_PREFIX}{_q(app)}|{_q(deployment)}|"


def _key(app: str, deployment: str, e: Entry) -> bytes:
    return f"{_prefix(app, deployment)}{_q(e.replica)}|{_q(e.node_id)}|{_q(e.host)}|{e.port}".encode()


def register(app: str, deployment: str, entry: Entry) -> None:
    """Announce ``entry`` (the replica listens now)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_key(app, deployment, entry), b"1", overwrite=True, namespace=_NAMESPACE)


def listing(app: str, deployment: str) -> list[Entry]:
    """Every announced replica of ``deployment`` (some may be gone without saying so)."""
    from ray.experimental import internal_kv

    out = []
    prefix = _prefix(app, deployment)
    for raw in internal_kv._internal_kv_list(prefix, namespace=_NAMESPACE):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = key[len(prefix) :].split("|")
        if len(parts) != 4 or not parts[3].isdigit():
            continue
        replica, node_id, host = (urllib.parse.unquote(p) for p in parts[:3])
        out.append(Entry(replica, node_id, host, int(parts[3])))
    return out


def forget(app: str, deployment: str, replica: str) -> None:
    """Remove ``replica``'s entries (it stops, or nobody listens at its address any more)."""
    from ray.experimental import internal_kv

    key = f"{_prefix(app, deployment)}{_q(replica)}|".encode()
    internal_kv._internal_kv_del(key, del_by_prefix=True, namespace=_NAMESPACE)
