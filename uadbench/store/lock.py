"""A lock file that keeps two runs from writing into one run directory at once.

The lock holds the owner's host and pid. A lock whose owner is on this host and no
longer alive is stale and is taken over (a killed run must not block its resume).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from ..errors import RunDirError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                pid, host = int(owner.get("pid", -1)), owner.get("host")
                if host == me["host"] and pid > 0 and not _alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its owner died
                    continue
                if not owner:
                    self.path.unlink(missing_ok=True)  # half-written lock of a killed run
                    continue
                raise RunDirError(
                    f"{self.path.parent} is in use by another run (pid {pid} on {host}); wait for it, "
                    f"or delete {self.path} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirError(
            f"could not take the lock {self.path}; delete it if no run is using the directory"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
