"""Logging set-up with a filter that masks every configured secret, should one slip into a message.

`logging.format: text` writes "time level logger: message" lines; `json` one JSON object per line
(time in UTC RFC 3339, level, logger, message, the record's extra fields, and the traceback as
`exception`). The filter masks the message, the traceback and the extra fields before either
formatter sees them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from citywatch.config import Settings

# scheme://user:PASSWORD@host: the password runs to the last '@' before the path (urlsplit's rule).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)(?P<password>[^\s/]*)@")
log = logging.getLogger("citywatch")


def mask_url_credentials(text: str) -> str:
    """`mqtt://user:secret@host` -> `mqtt://user:***@host`, wherever URLs appear in `text`."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text) if "://" in text else text


# What every LogRecord carries; anything else on a record came from `extra=` (or a library's own fields).
_STANDARD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                                                                        "taskName"}
_PLAIN = (int, float, bool, type(None))
_TRACEBACKS = logging.Formatter()


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_FIELDS and not k.startswith("_")}


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def mask(self, text: str) -> str:
        masked = mask_url_credentials(text)
        if self.secrets and any(s in masked for s in self.secrets):
            for s in self.secrets:
                masked = masked.replace(s, "***")
        return masked

    def _mask_value(self, value: Any) -> Any:
        """Strings masked, containers walked; any other object becomes its masked str() (what a
        formatter would print of it)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, dict):
            return {str(k): self._mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._mask_value(v) for v in value]
        return self.mask(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # formatters print exc_text when it is set
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        for key, value in extra_fields(record).items():
            setattr(record, key, self._mask_value(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339, milliseconds), level, logger, message, then the
    record's extra fields (one that would shadow those four gets an `extra_` prefix), `exception` and
    `stack` when present. Newlines and control characters inside are escaped, so a record is one line."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out: dict[str, Any] = {"time": at, "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        for key, value in extra_fields(record).items():
            out[f"extra_{key}" if key in out else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def _url_passwords(urls: list[str | None]) -> list[str]:
    found = []
    for url in urls:
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            found.append(password)
    return found


def configured_secrets(settings: Settings) -> list[str]:
    values = [settings.mqtt.password, settings.webhooks.secret, settings.influx.token, settings.api.token,
              settings.kafka.password, settings.dispatch.secret]
    values += [route.secret for route in settings.webhooks.routes]
    urls = [settings.mqtt.url, settings.influx.url, settings.webhooks.url]
    urls += [route.url for route in settings.webhooks.routes]
    found = [v.get_secret_value() for v in values if v is not None] + _url_passwords(urls)
    apprise = [url.get_secret_value() for route in settings.webhooks.routes for url in route.apprise]
    if apprise:  # routes to people: what in their Apprise URLs is a credential (citywatch/sinks/notify.py)
        from citywatch.sinks.apprise_urls import secret_values

        found += [value for url in apprise for value in secret_values(url)]
    return found


def reachable_from_network(host: str) -> bool:
    """True unless `host` is a loopback address or `localhost` (0.0.0.0 and :: are every interface)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # "", "*" and host names: other machines may reach them


def log_handler(settings: Settings) -> logging.Handler:
    """stderr, in the configured format, every record masked first."""
    handler = logging.StreamHandler()
    if settings.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(configured_secrets(settings)))
    return handler


def faust_logging(settings: Settings, level: str | None = None) -> dict[str, Any]:
    """Keyword arguments for faust.App (its Worker reads them from the app's conf): our handler (format,
    masking) instead of mode's colour logger."""
    config = {"version": 1, "disable_existing_loggers": False,
              "root": {"level": (level or settings.log_level).upper(), "handlers": []}}
    return {"logging_config": config, "loghandlers": [log_handler(settings)]}


def setup_logging(settings: Settings) -> None:
    handler = log_handler(settings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("amqtt", "transitions", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.api.enabled and reachable_from_network(settings.api.host):
        log.warning("api.host %s: the HTTP API is reachable from the network (plain HTTP, guarded only by its "
                    "bearer token); bind 127.0.0.1, or put a firewall and a TLS proxy in front",
                    settings.api.host)
