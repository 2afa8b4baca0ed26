"""logging.format: json writes one JSON object per line (time in UTC RFC 3339, level, logger, message,
extra fields, the traceback); the secret filter masks the message, the extras and the traceback in
either format; `citywatch run` and the Faust worker use it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import Settings
from citywatch.logs import JsonFormatter, faust_logging, setup_logging
from tests.conftest import make_settings
from tests.servers.mosquitto import free_port

SECRETS = {"mqtt": "hunter2-mqtt-pw", "hook": "whsec_aHVudGVyMi1ob29r", "kafka": "hunter2-kafka-pw",
           "token": "hunter2-api-token"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def secret_settings(tmp_path: Path, fmt: str) -> Settings:
    return make_settings(tmp_path / "data", logging={"format": fmt}, mqtt={"password": SECRETS["mqtt"]},
                         webhooks={"secret": SECRETS["hook"]}, api={"port": 0, "token": SECRETS["token"]},
                         kafka={"security_protocol": "SASL_PLAINTEXT", "username": "cw", "password": SECRETS["kafka"]})


def log_everything(logger: logging.Logger) -> None:
    logger.warning("connecting to %s", f"mqtt://collector:{SECRETS['mqtt']}@broker:1883",
                   extra={"device": "gas-1", "count": 3, "target": f"https://x/?k={SECRETS['hook']}",
                          "nested": {"headers": [f"Bearer {SECRETS['token']}"]}, "level": "shadowed"})
    logger.info("a message\nthat tries to forge a second line")
    try:
        raise RuntimeError(f"kafka refused password {SECRETS['kafka']}")
    except RuntimeError:
        logger.exception("worker failed")


def test_json_lines_carry_the_fields_and_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   restore_logging: None) -> None:
    setup_logging(secret_settings(tmp_path, "json"))
    log_everything(logging.getLogger("citywatch.test"))
    err = capsys.readouterr().err
    for secret in SECRETS.values():
        assert secret not in err
    lines = [json.loads(line) for line in err.splitlines()]  # every line one JSON object
    assert len(lines) == 3
    first, second, third = lines
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    at = datetime.fromisoformat(first["time"])
    assert first["time"].endswith("Z") and at.utcoffset() == UTC.utcoffset(None)
    assert abs(at.timestamp() - datetime.now(UTC).timestamp()) < 60
    assert (first["level"], first["logger"]) == ("WARNING", "citywatch.test")
    assert first["message"] == "connecting to mqtt://collector:***@broker:1883"
    assert first["device"] == "gas-1" and first["count"] == 3
    assert first["target"] == "https://x/?k=***" and first["nested"] == {"headers": ["Bearer ***"]}
    assert first["extra_level"] == "shadowed"
    assert second["message"] == "a message\nthat tries to forge a second line"
    assert third["level"] == "ERROR" and "RuntimeError: kafka refused password ***" in third["exception"]
    assert "Traceback (most recent call last)" in third["exception"]


def test_text_format_masks_tracebacks_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          restore_logging: None) -> None:
    setup_logging(secret_settings(tmp_path, "text"))
    log_everything(logging.getLogger("citywatch.test"))
    err = capsys.readouterr().err
    for secret in SECRETS.values():
        assert secret not in err
    assert "WARNING citywatch.test: connecting to mqtt://collector:***@broker:1883" in err
    assert "RuntimeError: kafka refused password ***" in err
    with pytest.raises(ValueError):
        json.loads(err.splitlines()[0])


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    from citywatch.errors import ConfigError

    with pytest.raises(ConfigError, match="logging.format"):
        make_settings(tmp_path, logging={"format": "xml"})


def test_the_faust_worker_logs_through_our_handler(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   restore_logging: None) -> None:
    """faust.Worker sets logging up from its app's conf: with ours, the root logger has only our handler
    (JSON, masked) instead of mode's colour logger."""
    import asyncio

    import faust

    loop = asyncio.new_event_loop()
    try:
        app = faust.App("cw-log-test", broker="kafka://127.0.0.1:9", web_enabled=False, autodiscover=False,
                        datadir=str(tmp_path / "faust"), **faust_logging(secret_settings(tmp_path, "json"), "info"))
        faust.Worker(app, loop=loop, loglevel="info", quiet=True)._setup_logging()
    finally:
        loop.close()
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1 and all(type(h).__name__ == "SpinnerHandler" for h in root.handlers if h not in ours)
    logging.getLogger("faust.worker").info("joined with %s", SECRETS["kafka"])
    line = json.loads(capsys.readouterr().err.strip())
    assert line["logger"] == "faust.worker" and line["message"] == "joined with ***"


def test_citywatch_run_logs_json_lines(tmp_path: Path) -> None:
    """A real `citywatch run` whose API port is taken stops on one fatal line: in JSON here."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "CITYWATCH_LOGGING__FORMAT": "json", "CITYWATCH_DATA_DIR": str(tmp_path / "data"),
               "CITYWATCH_API__PORT": str(taken.getsockname()[1]),
               "CITYWATCH_MQTT__URL": f"mqtt://127.0.0.1:{free_port()}", "CITYWATCH_MQTT__PASSWORD": SECRETS["mqtt"],
               "CITYWATCH_MQTT__USERNAME": "collector", "CITYWATCH_MQTT__COLLECTOR_PROCESS": "false"}
        done = subprocess.run([sys.executable, "-m", "citywatch.cli", "run"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    records: list[dict[str, Any]] = []
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    fatal = [r for r in records if r["level"] == "CRITICAL"]
    assert fatal and "cannot serve the API" in fatal[0]["message"], done.stderr
    assert SECRETS["mqtt"] not in done.stderr
