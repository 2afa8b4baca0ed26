"""MQTT over TLS against a real Mosquitto TLS listener with certificates made by the test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.ingest.collector import Collector, Message
from citywatch.ingest.handoff import Handoff
from citywatch.model import Device
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.certs import Certs, make_certs
from tests.servers.mosquitto import MosquittoServer, free_port

GAS = Device(id="gas-tls", kind="gas")


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def tls_broker(tmp_path: Path, certs: Certs, require_client_cert: bool) -> MosquittoServer:
    tls_port = free_port()
    server = MosquittoServer(tmp_path / "mosquitto", extra=(
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {certs.ca}\ncertfile {certs.server_cert}\nkeyfile {certs.server_key}\n"
        f"require_certificate {'true' if require_client_cert else 'false'}\n"
    ))
    server.tls_port = tls_port  # type: ignore[attr-defined]
    server.start()
    return server


def test_runner_over_tls_with_ca_verification(tmp_path: Path, certs: Certs) -> None:
    broker = tls_broker(tmp_path, certs, require_client_cert=False)
    try:
        settings = make_settings(tmp_path / "data", mqtt={
            "url": f"mqtts://127.0.0.1:{broker.tls_port}", "ca_file": certs.ca, "client_id": "cw-tls"})  # type: ignore[attr-defined]
        registry = Registry(registry_path(settings.data_dir))
        registry.add(GAS)
        registry.close()
        run = RunnerThread(settings).start()
        try:
            assert run.runner.collector.connected.is_set()
            # published on the plain listener, received by the collector over TLS
            publish_all(broker, [("citywatch/gas/gas-tls/telemetry",
                                  json.dumps({"ts": time.time() - 1, "lel_pct": 1}).encode())])
            wait_until(lambda: run.runner.pipeline.counters["processed"] == 1)
        finally:
            run.stop()
    finally:
        broker.stop()


def connect_collector(settings_mqtt: dict[str, object], tmp_path: Path, timeout: float) -> bool:
    import asyncio

    settings = make_settings(tmp_path / "data", mqtt=settings_mqtt)
    loop = asyncio.new_event_loop()
    try:
        collector = Collector(settings.mqtt, Handoff[Message](10, loop))
        collector.start()
        try:
            return collector.wait_connected(timeout)
        finally:
            collector.stop()
    finally:
        loop.close()


def test_wrong_ca_is_refused_and_client_certificates_work(tmp_path: Path, certs: Certs) -> None:
    broker = tls_broker(tmp_path, certs, require_client_cert=True)
    url = f"mqtts://127.0.0.1:{broker.tls_port}"  # type: ignore[attr-defined]
    try:
        # the server's certificate is not signed by this CA: verification (on by default) fails
        assert not connect_collector({"url": url, "ca_file": certs.other_ca, "cert_file": certs.client_cert,
                                      "key_file": certs.client_key, "client_id": "cw-a"}, tmp_path, 3)
        # the right CA but no client certificate: the broker requires one
        assert not connect_collector({"url": url, "ca_file": certs.ca, "client_id": "cw-b"}, tmp_path, 3)
        # the right CA and a client certificate signed by it
        assert connect_collector({"url": url, "ca_file": certs.ca, "cert_file": certs.client_cert,
                                  "key_file": certs.client_key, "client_id": "cw-c"}, tmp_path, 10)
    finally:
        broker.stop()
