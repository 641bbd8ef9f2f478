"""Host names: which addresses are loopback, which ``Host`` headers a server answers, and what a
URL of a bound server looks like. Plain functions, no HTTP library."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from dagserve._errors import OptionsError

__all__ = ["HostFilter", "check_host_entry", "host_list", "host_name", "is_loopback", "served_hosts", "url_for", "warn_if_exposed"]

logger = logging.getLogger("dagserve.serve")


def is_loopback(host: str) -> bool:
    """Does ``host`` listen on this machine only?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves outside


def host_name(value: str) -> str:
    """The name in a ``Host`` header (or an ``allowed_hosts`` entry): lower case, without the
    port, the brackets of an IPv6 address or a final dot. ``"[::1]:8000"`` -> ``"::1"``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".") or value


def served_hosts(host: str, token: str | None, allowed_hosts: Iterable[str] | None) -> tuple[str, ...] | None:
    """The ``Host`` names a server that dagserve binds itself answers (``IngressConfig.allowed_hosts``).

    Listed names: loopback and those. None listed: loopback only when bound to loopback without
    a request token (a web page could otherwise reach it), else any (``None``).
    """
    listed = host_list(allowed_hosts)
    if listed:
        return listed
    return () if is_loopback(host) and not token else None


def host_list(allowed_hosts: Iterable[str] | None) -> tuple[str, ...] | None:
    if allowed_hosts is None:
        return None
    if isinstance(allowed_hosts, str):
        return (allowed_hosts,)  # one name, not its characters
    return tuple(allowed_hosts)


def check_host_entry(entry: object) -> None:
    name = host_name(entry) if isinstance(entry, str) and not any(c in entry for c in "/@?# \t") else ""
    body = name[2:] if name.startswith("*.") else name
    if name != "*" and (not body or "*" in body):
        raise OptionsError(
            f"allowed_hosts entry {entry!r} is not a host name; give names such as 'api.example.com', "
            "'*.example.com' (its subdomains), '10.0.0.5' or '*' (any)."
        )


def warn_if_exposed(host: str, token: str | None) -> bool:
    """Log a prominent warning (and return True) when ``host`` is reachable from outside without a token."""
    if token or is_loopback(host):
        return False
    logger.warning(
        "\n%s\nSERVING ON %s WITHOUT A TOKEN: anyone who can reach this port can run your graphs.\n"
        "Set DAGSERVE_TOKEN (or --token / token=) to require 'Authorization: Bearer <token>', or bind "
        "127.0.0.1.\n%s",
        "!" * 78,
        host,
        "!" * 78,
    )
    return True


def url_for(host: str, port: int) -> str:
    """``http://host:port/``, with unspecified addresses shown as loopback (what a browser can open)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class HostFilter:
    """The ``Host`` headers a server answers: loopback ones (``localhost``, ``127.0.0.1``,
    ``[::1]``, any port) and the names listed (``api.example.com``; ``*.example.com`` for its
    subdomains; ``*`` for any).

    Why: a web page the user opens may send requests to a server on the user's machine, and
    through DNS rebinding (its own name re-pointed at 127.0.0.1) read the answers; its requests
    then carry the page's name as Host, which this refuses.
    """

    def __init__(self, listed: Iterable[str] = ()) -> None:
        self.listed = tuple(listed)
        names = [host_name(entry) for entry in self.listed]
        self.any = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"
        self.names = frozenset(n for n in names if not n.startswith("*"))
        self._known: dict[bytes, bool] = {}  # raw Host header -> verdict (a few distinct values)

    def allows(self, raw: bytes | None) -> bool:
        if self.any:
            return True
        if raw is None:
            return False  # HTTP/1.1 requires Host; every browser sends it
        verdict = self._known.get(raw)
        if verdict is None:
            name = host_name(raw.decode("latin-1"))
            verdict = is_loopback(name) or name in self.names or (bool(self.suffixes) and name.endswith(self.suffixes))
            if len(self._known) < 256:  # bounded: a client sending many names gets no cache
                self._known[raw] = verdict
        return verdict

    def refusal(self, raw: bytes | None) -> str:
        accepted = ", ".join(["localhost", "127.0.0.1", "[::1]", *self.listed])
        given = "no Host header" if raw is None else f"the Host {raw.decode('latin-1')[:100]!r}"
        return (
            f"This server answers requests for {accepted} only, and this one has {given}. A web page may be "
            "trying to reach a server on this machine (DNS rebinding). If you reach the server by that name "
            "yourself, list it with --allowed-host NAME (allowed_hosts=[...] in Python), or set a token."
        )
