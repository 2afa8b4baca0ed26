"""One owner per data directory: an exclusive flock on <data_dir>/citywatch.lock.

`citywatch run` holds it for its whole life and writes its pid and API address into the file,
so a second runner (or a CLI command that would write the store) learns who owns the directory
and refuses, or goes through the owner's API. The kernel releases a flock when its holder dies,
however it dies: a stale file left by a killed runner never blocks the next one. The file is
never deleted (deleting a lock file lets two processes each lock a different inode).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from citywatch.errors import CitywatchError

LOCK_NAME = "citywatch.lock"


class DataDirBusy(CitywatchError):
    """Another process holds the data directory."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.holder = holder
        api = holder.get("api") or "no API"
        super().__init__(f"data dir {data_dir} is in use by {holder.get('command', 'another citywatch')} "
                         f"(pid {holder.get('pid', '?')}, api {api}); stop it first or use another data_dir")


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


def _read(fd: int) -> dict[str, Any]:
    """The holder's record; it is rewritten in place, so an empty or partial read is tried again."""
    for _ in range(5):
        try:
            info = json.loads(os.pread(fd, 4096, 0))
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        return info if isinstance(info, dict) else {}
    return {}


class DataDirLock:
    """Take with `acquire()` (raises DataDirBusy), give back with `release()` (or `with`)."""

    def __init__(self, data_dir: Path, command: str) -> None:
        self.data_dir = data_dir
        self.path = lock_path(data_dir)
        self.command = command
        self.fd: int | None = None
        self.info: dict[str, Any] = {}

    def acquire(self) -> DataDirLock:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CitywatchError(f"cannot open the data dir lock {self.path}: {exc.strerror or exc} (run as the "
                                 "user that owns the data dir)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.info = {"pid": os.getpid(), "command": self.command, "api": None, "since": time.time()}
        self._write()
        return self

    def set_api(self, address: str | None) -> None:
        """Record where the owner's API listens (host:port), for CLI commands to go through it."""
        self.info["api"] = address
        self._write()

    def _write(self) -> None:
        if self.fd is None:
            return
        data = json.dumps(self.info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # no holder: nothing to mislead a reader
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the data dir now (pid, command, api, since), or None if nobody does. Only looks:
    the file is not written, so a runner starting at this moment is not turned away."""
    path = lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or {"pid": None}
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return None
