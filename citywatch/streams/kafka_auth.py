"""How the Kafka clients authenticate and encrypt: `kafka.security_protocol` and friends, turned into
aiokafka's keyword arguments (bridge producer, admin client, CLI actions) and Faust's
`broker_credentials` (workers and sink), so every client speaks to the brokers the same way.

PLAINTEXT: neither (a closed network only). SASL_PLAINTEXT: a password (SCRAM-SHA-512 by default;
PLAIN sends it in clear) on an unencrypted connection, e.g. inside the compose network. SASL_SSL:
the same inside TLS (across machines). SSL: TLS alone, verified against `kafka.ca_file` or the
system's CAs.
"""

from __future__ import annotations

import ssl
from typing import Any

from citywatch.config import KafkaSettings
from citywatch.errors import ConfigError


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying client context for SSL and SASL_SSL (None otherwise)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        return ssl.create_default_context(cafile=str(kafka.ca_file) if kafka.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka.ca_file: cannot load {kafka.ca_file}: {exc}") from exc


def _login(kafka: KafkaSettings) -> tuple[str, str]:
    if not kafka.username or kafka.password is None:
        raise ConfigError(f"kafka.username and kafka.password (or password_file): required with security_protocol "
                          f"{kafka.security_protocol}")
    return kafka.username, kafka.password.get_secret_value()


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        username, password = _login(kafka)
        options.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=username,
                       sasl_plain_password=password)
    return options


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT)."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        username, password = _login(kafka)
        return SASLCredentials(username=username, password=password, mechanism=kafka.sasl_mechanism,
                               ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None
