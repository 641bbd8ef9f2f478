"""A process of another user at the end of a direct-transport socket (tests need root to make one).

It sends a pickle whose loading creates a marker directory: a peer that reads its frames would run
another user's code. ``serve`` listens on a socket (moved into a replica directory by the test, as
a planted socket would be); ``connect`` connects to a replica's socket and sends the frame.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The uid and gid the process drops to ("nobody" on Debian and most Linux systems).
NOBODY = 65534

_SCRIPT = r"""
import os, pickle, socket, struct, sys, time
mode, path, marker, uid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Plant:
    def __reduce__(self):
        return (os.mkdir, (marker,))

frame = pickle.dumps(Plant())
frame = struct.pack("!Q", len(frame)) + frame
os.setgid(uid)
os.setuid(uid)  # everything is imported: nothing is read from root's files from here on
s = socket.socket(socket.AF_UNIX)
if mode == "serve":
    s.bind(path)
    s.listen()
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(frame)
        except OSError:
            pass
else:
    s.connect(path)
    s.sendall(frame)
    print("ready", flush=True)
    s.settimeout(60)
    try:
        s.recv(1)  # until the other end hangs up
    except OSError:
        pass
"""

needs_root = os.getuid() == 0


@contextlib.contextmanager
def foreign_peer(mode: str, path: str, marker: Path) -> Iterator[subprocess.Popen[str]]:
    """Run the other user's process; ``serve`` binds in a directory of its own and yields once
    listening (move ``path`` from there: see ``foreign_socket``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, mode, path, str(marker), str(NOBODY)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@contextlib.contextmanager
def foreign_socket(destination: str, marker: Path) -> Iterator[None]:
    """A socket of another user's listening process, planted at ``destination``."""
    home = tempfile.mkdtemp(prefix="dagserve-foreign-")
    os.chown(home, NOBODY, NOBODY)
    path = os.path.join(home, "planted.sock")
    try:
        with foreign_peer("serve", path, marker):
            os.rename(path, destination)  # root may move it where only we could put one
            yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(destination)
        with contextlib.suppress(OSError):
            os.rmdir(home)
