"""The bootstrap admin's token: the configured `api.token`, else one generated at the first start into
data_dir/api-token (mode 0600) for the CLI on the same machine to use."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from citywatch.config import ApiSettings
from citywatch.sinks.database import make_private


def api_token(settings: ApiSettings, data_dir: Path, create: bool = True) -> str | None:
    """The configured token, else the one in data_dir/api-token (created if asked)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    path = data_dir / "api-token"
    if path.exists():
        make_private(path)  # a secret: 0600, also when an older version or a person made it wider
        return path.read_text().strip()
    if not create:
        return None
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token
