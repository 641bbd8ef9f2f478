"""Where a node's replicas listen for the direct transport: one private socket directory each.

:func:`socket_dir` makes (or refuses) the directory of a node's replica sockets; :func:`replica_stats`
asks every replica listening there for its stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from typing import Any

from dagserve.backends.ray.direct.frames import FRAME_LENGTH, OK, STATS, dumps, loads, same_user

__all__ = ["replica_stats", "socket_dir"]

log = logging.getLogger("dagserve.ray")


def socket_dir(cluster: str, app: str, deployment: str, node_id: str = "") -> str | None:
    """The directory holding the sockets of ``deployment``'s replicas on Ray node ``node_id``,
    created private (0700). One per Ray node: replicas of another raylet on this host are another
    machine's to Ray, and are reached like one (over TCP, never their Unix socket).

    ``None`` when it is not private (another user owns it, or others may write to it): the
    transport is then off and calls go through Serve. The path stays short, as Unix socket paths must (< 108 bytes).
    """
    root = os.path.join(tempfile.gettempdir(), f"dagserve-{os.getuid()}")
    key = hashlib.sha1(f"{cluster}\0{app}\0{deployment}\0{node_id}".encode()).hexdigest()[:16]
    path = os.path.join(root, key)
    try:
        for p in (root, path):
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o700)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                # Never repaired: another user could have put a socket in it while it was open.
                log.warning(
                    "Not using the direct transport: %s is not a private (0700) directory of this user; "
                    "remove it to let dagserve create it again.",
                    p,
                )
                return None
    except OSError as exc:
        log.warning("Not using the direct transport: cannot create %s (%s).", path, exc)
        return None
    return path


def replica_stats(directory: str, timeout_s: float = 2.0) -> list[Any]:
    """Ask every replica listening in ``directory`` for its stats (blocking; not on an event loop).

    Opens its own short connections, so it works from any thread, whatever loop the calls use.
    """

    async def ask(path: str) -> Any:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            if not same_user(writer.transport):
                return None  # its answer is a pickle: not from another user's process
            data = dumps((STATS, 1))
            writer.write(FRAME_LENGTH.pack(len(data)) + data)
            (n,) = FRAME_LENGTH.unpack(await reader.readexactly(FRAME_LENGTH.size))
            _, status, value = loads(await reader.readexactly(n))
            return loads(value) if status == OK else None
        finally:
            writer.close()

    async def ask_all() -> list[Any]:
        try:
            paths = [e.path for e in os.scandir(directory) if e.name.endswith(".sock")]
        except FileNotFoundError:
            return []
        if not paths:
            return []
        tasks = [asyncio.ensure_future(ask(p)) for p in paths]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        return [t.result() for t in done if t.exception() is None and t.result() is not None]

    return asyncio.run(ask_all())
