"""Replace a file so that a crash leaves either the old one or the new one, never half of each
(archives of alerts and audit records are appended this way)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from citywatch.sinks.database import PRIVATE_MODE


def write_atomically(path: Path, head: Path | None, data: bytes) -> None:
    """Replace `path` by (the bytes of `head`, if given) + `data`: a temp file (mode 0600) fsynced,
    renamed over it and the directory fsynced, so a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            if head is not None and head.exists():
                with open(head, "rb") as old:
                    while chunk := old.read(1 << 20):
                        f.write(chunk)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
