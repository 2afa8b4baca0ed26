"""kafka.security_protocol: every Kafka client (bridge producer and admin, CLI actions, Faust workers and
sink) gets the same SASL / TLS settings; SASL without a password refuses to start, naming the keys."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from citywatch.errors import ConfigError
from citywatch.streams.faust_app import FaustCity
from citywatch.streams.kafka_auth import client_options, faust_credentials
from tests.conftest import make_settings
from tests.helpers import DictDevices
from tests.servers.certs import make_certs


def test_plaintext_is_the_default_and_adds_nothing(tmp_path: Path) -> None:
    kafka = make_settings(tmp_path).kafka
    assert client_options(kafka) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(kafka) is None


def test_sasl_scram_reaches_aiokafka_and_faust(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret-from-a-file\n")
    s = make_settings(tmp_path / "data", api={"enabled": False},
                      kafka={"security_protocol": "SASL_PLAINTEXT", "username": "citywatch",
                             "password_file": str(secret)})
    options = client_options(s.kafka)
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "citywatch", "sasl_plain_password": "s3cret-from-a-file"}
    from aiokafka import AIOKafkaProducer

    async def build() -> None:  # aiokafka accepts every option as given
        await AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **options).stop()

    asyncio.run(build())

    city = FaustCity(s, s.kafka, role="process", worker_id="w1", devices=DictDevices({}))
    try:
        credentials: Any = city.app.conf.broker_credentials
        assert (credentials.username, credentials.password) == ("citywatch", "s3cret-from-a-file")
        assert str(credentials.mechanism.value) == "SCRAM-SHA-512"
        assert str(credentials.protocol.value) == "SASL_PLAINTEXT"
    finally:
        city.close()


def test_sasl_ssl_verifies_the_brokers_against_the_ca_file(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    kafka = make_settings(tmp_path / "data", kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                                    "username": "cw", "password": "pw-pw-pw",
                                                    "ca_file": str(certs.ca)}).kafka
    context = client_options(kafka)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    credentials: Any = faust_credentials(kafka)
    assert str(credentials.protocol.value) == "SASL_SSL" and credentials.ssl_context is not None


def test_sasl_without_a_password_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kafka.username and kafka.password"):
        make_settings(tmp_path, kafka={"security_protocol": "SASL_SSL", "username": "cw"})
    with pytest.raises(ConfigError, match="kafka.security_protocol"):
        make_settings(tmp_path, kafka={"security_protocol": "SASL"})
