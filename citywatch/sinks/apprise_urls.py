"""Apprise URLs without sending anything: is one usable (config validation, no network), and which of
its parts are secrets to mask in every log line (Apprise logs what it loads). Kept apart from the
sender (citywatch/sinks/notify.py) so the configuration can check URLs without importing the sender."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

LONG_PART = 16  # path segments and query values this long are treated as tokens (masked in logs)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "?"


def _instantiate(url: str) -> Any:
    from apprise import Apprise

    return Apprise.instantiate(url)


def check_apprise_url(url: str) -> str | None:
    """None if Apprise can load `url`, else what is wrong (config validation; never echoes the URL)."""
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        return "empty, or contains spaces or control characters"
    if "://" not in url:
        return "not a URL (scheme://...)"
    if not secret_values(url, loadable=True):
        return (f"Apprise cannot load this {scheme_of(url)}:// URL (unknown scheme, or a token or address missing or "
                "malformed; see https://github.com/caronc/apprise/wiki)")
    return None


def secret_values(url: str, loadable: bool = False) -> list[str]:
    """The parts of an Apprise URL to mask wherever they might appear: the URL itself, what the service's
    Apprise plugin marks private (password, token, key, secret), header values (`+Authorization=...`),
    the URL's password, and any path segment or query value of at least LONG_PART characters, each in
    its URL-encoded form too. They are registered with the log filter before Apprise parses the URL
    (it logs what it loads). `loadable`: return [] if Apprise cannot load the URL."""
    found: set[str] = {url}
    try:
        parts = urlsplit(url)
        if parts.password:
            found.add(unquote(parts.password))
        found.update(unquote(s) for s in (parts.netloc.rsplit("@", 1)[-1], *parts.path.split("/"))
                     if len(unquote(s)) >= LONG_PART)
        found.update(v for _, v in parse_qsl(parts.query) if len(v) >= LONG_PART)
    except ValueError:
        pass
    REDACT.add(_with_encoded(found))
    plugin = _instantiate(url) if "://" in url else None
    if plugin is None and loadable:
        return []
    if plugin is not None:
        for group in ("template_tokens", "template_args"):
            for key, spec in (getattr(plugin, group, None) or {}).items():
                if isinstance(spec, dict) and spec.get("private"):
                    found.update(_strings(getattr(plugin, spec.get("map_to", key), None)))
        for value in (getattr(plugin, "headers", None) or {}).values():
            found.update(_strings(value))
            found.update(w for w in str(value).split() if len(w) >= 8)
    values = _with_encoded(found)
    REDACT.add(values)
    return values


def _with_encoded(values: Iterable[str]) -> list[str]:
    kept = {v for v in values if len(v) >= 4}
    return sorted(kept | {quote(v, safe="") for v in kept}, key=len, reverse=True)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set | frozenset):
        return [v for v in value if isinstance(v, str)]
    return []


class _Redact(logging.Filter):
    """Masks registered secrets in the records of the logger it sits on (before any handler, Apprise's
    own result capture included). Secrets are only ever added: several runners may share a process."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.secrets: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            merged = set(self.secrets) | {v for v in values if len(v) >= 4}
            self.secrets = sorted(merged, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                return True
            masked = self.mask(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


REDACT = _Redact()
for _name in ("apprise", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(REDACT)
