"""Authenticating a cross-node connection of the direct transport, before any pickle is read.

A replica on another Ray node is reached over TCP on that node's Ray address, where
``SO_PEERCRED`` means nothing: instead both ends prove that they hold the cluster's Ray
authentication token, with an HMAC challenge-response over fresh nonces (the token itself never
crosses the wire, and a recorded exchange cannot be replayed):

1. each end sends ``MAGIC`` and a 32-byte random nonce (the *hello*);
2. the caller (client) sends ``HMAC(key, b"C" + replica_nonce + caller_nonce)``;
3. the replica (server) checks it (constant-time compare) and only then answers with
   ``HMAC(key, b"S" + caller_nonce + replica_nonce)``, which the caller checks.

The role letters keep one side's proof from being replayed as the other's; the replica proves
nothing to an end that has not proven itself first (no oracle for strangers). Until both checks
pass, each end reads raw bytes of fixed sizes only (``HELLO_BYTES``, ``PROOF_BYTES``) and never
unpickles; a failed check closes the connection. ``key`` is derived from the token
(:func:`derive_key`). This module imports no Ray: :func:`ray_token_key` reads the token from Ray
lazily.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["HELLO_BYTES", "MAGIC", "PROOF_BYTES", "AuthFailed", "Handshake", "derive_key", "ray_token_key"]

#: What a hello starts with (a version: a different one fails the handshake).
MAGIC = b"DGSAUTH1"
_NONCE_BYTES = 32
HELLO_BYTES = len(MAGIC) + _NONCE_BYTES
PROOF_BYTES = hashlib.sha256().digest_size


class AuthFailed(Exception):
    """The peer did not prove that it holds the cluster's token (or spoke another protocol)."""


def derive_key(token: str | bytes) -> bytes:
    """The HMAC key of the handshake, from the cluster's token (a key of this use only)."""
    raw = token.encode() if isinstance(token, str) else token
    return hmac.new(raw, b"dagserve direct transport v1", hashlib.sha256).digest()


def ray_token_key() -> bytes | None:
    """The handshake key from the Ray token this process uses, or ``None`` when this Ray runs
    without token authentication (the cross-node transport then stays off)."""
    try:
        from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return None
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return None
    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token():
        return None
    header = "".join(loader.get_token_for_http_header().values())
    return derive_key(header) if header else None


def _proof(key: bytes, role: bytes, challenge: bytes, own: bytes) -> bytes:
    return hmac.new(key, role + challenge + own, hashlib.sha256).digest()


class Handshake:
    """One end's side of the handshake, fed the raw bytes the peer sends.

    ``hello`` goes out as soon as the connection is made; :meth:`feed` takes what arrived and
    returns ``(reply, rest)``: bytes to send now, and what came after the handshake (frames) once
    :attr:`done`; it raises :class:`AuthFailed` on a wrong hello or proof.
    """

    __slots__ = ("_buf", "_key", "_nonce", "_peer_nonce", "client", "done", "hello")

    def __init__(self, key: bytes, *, client: bool) -> None:
        self._key = key
        self.client = client
        self._nonce = os.urandom(_NONCE_BYTES)
        self.hello = MAGIC + self._nonce
        self._peer_nonce: bytes | None = None
        self._buf = b""
        self.done = False

    @property
    def answered(self) -> bool:
        """Has the peer's hello come (so this end has answered it)?"""
        return self._peer_nonce is not None

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        buf = self._buf + data
        reply = b""
        if self._peer_nonce is None:
            if len(buf) < HELLO_BYTES:
                if not MAGIC.startswith(buf[: len(MAGIC)]):
                    raise AuthFailed("the peer does not speak dagserve's direct transport")
                self._buf = buf
                return b"", b""
            hello, buf = buf[:HELLO_BYTES], buf[HELLO_BYTES:]
            if not hmac.compare_digest(hello[: len(MAGIC)], MAGIC):
                raise AuthFailed("the peer does not speak dagserve's direct transport")
            self._peer_nonce = hello[len(MAGIC) :]
            if self.client:  # the caller proves itself first
                reply = _proof(self._key, b"C", self._peer_nonce, self._nonce)
        if len(buf) < PROOF_BYTES:
            self._buf = buf
            return reply, b""
        proof, rest = buf[:PROOF_BYTES], buf[PROOF_BYTES:]
        self._buf = b""
        role = b"S" if self.client else b"C"
        if not hmac.compare_digest(proof, _proof(self._key, role, self._nonce, self._peer_nonce)):
            raise AuthFailed("the peer's proof of the cluster token is wrong")
        self.done = True
        if not self.client:  # the replica answers only a caller that proved itself
            reply += _proof(self._key, b"S", self._peer_nonce, self._nonce)
        return reply, rest
