"""Logging set-up with a filter that masks every configured secret, should one slip into a message."""

from __future__ import annotations

import ipaddress
import logging
import re
from urllib.parse import urlsplit

from citywatch.config import Settings

# scheme://user:PASSWORD@host: the password runs to the last '@' before the path (urlsplit's rule).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)(?P<password>[^\s/]*)@")
log = logging.getLogger("citywatch")


def mask_url_credentials(text: str) -> str:
    """`mqtt://user:secret@host` -> `mqtt://user:***@host`, wherever URLs appear in `text`."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text) if "://" in text else text


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url_credentials(message)
        if self.secrets and any(s in masked for s in self.secrets):
            for s in self.secrets:
                masked = masked.replace(s, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


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
    values = [settings.mqtt.password, settings.webhooks.secret, settings.influx.token, settings.api.token]
    values += [route.secret for route in settings.webhooks.routes]
    urls = [settings.mqtt.url, settings.influx.url, settings.webhooks.url]
    urls += [route.url for route in settings.webhooks.routes]
    found = [v.get_secret_value() for v in values if v is not None] + _url_passwords(urls)
    apprise = [url.get_secret_value() for route in settings.webhooks.routes for url in route.apprise]
    if apprise:  # routes to people: what in their Apprise URLs is a credential (citywatch/sinks/notify.py)
        from citywatch.sinks.notify import secret_values

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


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(configured_secrets(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("amqtt", "transitions", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.api.enabled and reachable_from_network(settings.api.host):
        log.warning("api.host %s: the HTTP API is reachable from the network (plain HTTP, guarded only by its "
                    "bearer token); bind 127.0.0.1, or put a firewall and a TLS proxy in front",
                    settings.api.host)
