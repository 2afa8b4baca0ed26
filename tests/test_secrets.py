"""No secret appears in logs, even when every sink is failing and logging at DEBUG."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from citywatch.devices.registry import Registry, registry_path
from citywatch.logs import RedactSecrets
from citywatch.model import Device
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer, free_port

SECRETS = {
    "webhook": "whsec_c3VwZXItc2VjcmV0LXdlYmhvb2sta2V5",
    "influx": "influx-token-7f3a9c2e1d",
    "api": "api-token-0b5e8d4c2a",
}


def test_secrets_never_logged(tmp_path: Path, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture) -> None:
    dead_port = free_port()  # nothing listens: webhooks and InfluxDB both fail and log errors
    settings = make_settings(
        tmp_path / "data",
        mqtt={"url": mosquitto.url, "client_id": "cw-secrets"},
        webhooks={"url": f"http://127.0.0.1:{dead_port}/hook?token={SECRETS['api']}", "secret": SECRETS["webhook"],
                  "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
        influx={"url": f"http://127.0.0.1:{dead_port}", "token": SECRETS["influx"], "flush_interval_ms": 50},
        api={"port": 0, "token": SECRETS["api"]},
    )
    registry = Registry(registry_path(settings.data_dir))
    registry.add(Device(id="gas-s", kind="gas"))
    registry.close()
    caplog.set_level(logging.DEBUG)
    run = RunnerThread(settings).start()
    try:
        publish_all(mosquitto, [("citywatch/gas/gas-s/telemetry",
                                 json.dumps({"ts": time.time() - 1, "lel_pct": 60}).encode())])
        wait_until(lambda: run.runner.delivery.stats()["attempts"] >= 3
                   and run.runner.influx.stats()["failed_attempts"] >= 1)
    finally:
        run.stop()
    text = caplog.text
    assert "webhook" in text.lower() or "influx" in text.lower()  # the failures were logged ...
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} secret leaked into the logs"  # ... without the secrets


def test_redact_filter_masks_configured_secrets() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("token influx-token-7f3a9c2e1d",),
                               None)
    RedactSecrets([SECRETS["influx"]]).filter(record)
    assert record.getMessage() == "failed with token ***"
