"""Bad configuration stops the start with one line naming the key (exit 2, no traceback);
`citywatch config` never shows credentials; an API bound to every interface is warned about."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.config import load_settings
from citywatch.errors import ConfigError
from citywatch.logs import RedactSecrets, configured_secrets, mask_url_credentials, setup_logging

BAD = [
    ({"timezone": "Mars/Olympus"}, "timezone", "Mars/Olympus"),
    ({"timezone": "../../etc/passwd"}, "timezone", "time zone"),
    ({"log_level": "CHATTY"}, "log_level", "CHATTY"),
    ({"influx": {"url": "localhost:8086"}}, "influx.url", "http"),
    ({"influx": {"url": "ftp://influx.example"}}, "influx.url", "http"),
    ({"influx": {"url": "http://"}}, "influx.url", "host"),
    ({"influx": {"url": "http://influx.example:99999"}}, "influx.url", "Port out of range"),
    ({"influx": {"url": "http://influx.example/\nx"}}, "influx.url", "control"),
    ({"rules": {"gas": {"level1_pct": 60, "level2_pct": 50}}}, "rules.gas",
     "rules.gas.level1_pct (60) must be below rules.gas.level2_pct (50)"),
    ({"rules": {"gas": {"level1_pct": 50}}}, "rules.gas", "rules.gas.level1_pct (50) must be below"),
    ({"rules": {"water": {"light_cm": 10, "moderate_cm": 10}}}, "rules.water",
     "rules.water.light_cm (10) must be below rules.water.moderate_cm (10)"),
    ({"rules": {"water": {"severe_cm": 5}}}, "rules.water",
     "rules.water.moderate_cm (10) must be below rules.water.severe_cm (5)"),
    ({"rules": {"noise": {"day_start_hour": 22}}}, "rules.noise",
     "rules.noise.day_start_hour (22) must differ from rules.noise.night_start_hour (22)"),
    ({"rules": {"health": {"battery_low_pct": 20, "battery_clear_pct": 20}}}, "rules.health",
     "rules.health.battery_low_pct (20) must be below rules.health.battery_clear_pct (20)"),
    ({"mqtt": {"topic_prefix": "citywatch/#\npattern readwrite #\n#"}}, "mqtt.topic_prefix", "wildcards"),
]


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **data}))
    return path


@pytest.mark.parametrize("data,key,says", BAD, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(BAD)])
def test_bad_value_is_refused_naming_the_key(tmp_path: Path, data: dict[str, object], key: str, says: str) -> None:
    config = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert key in str(caught.value) and says in str(caught.value)
    result = CliRunner().invoke(main, ["--config", str(config), "config"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not an unhandled exception
    assert key in result.output and says.splitlines()[0] in result.output
    assert not (tmp_path / "data").exists()


def test_good_values_still_load(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"timezone": "Europe/Paris", "log_level": "debug",
                                       "influx": {"url": "https://influx.example:8086/base"},
                                       "rules": {"gas": {"level1_pct": 10, "level2_pct": 20},
                                                 "noise": {"day_start_hour": 7, "night_start_hour": 23}},
                                       "mqtt": {"topic_prefix": "jx/city_watch-2"}}))
    assert s.log_level == "DEBUG" and s.rules.gas.level2_pct == 20 and s.mqtt.topic_prefix == "jx/city_watch-2"


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYWATCH_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "citywatch", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=config.parent)


def test_run_with_a_bad_time_zone_says_which_key_and_exits_2(tmp_path: Path) -> None:
    done = _cli(write(tmp_path, {"timezone": "Mars/Olympus", "log_level": "CHATTY"}), "run")
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr + done.stdout
    assert "timezone" in done.stderr and "Mars/Olympus" in done.stderr and "log_level" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_config_masks_credentials_in_urls(tmp_path: Path) -> None:
    config = write(tmp_path, {
        "mqtt": {"url": "mqtt://collector:hunter2-mqtt@127.0.0.1:1883"},
        "influx": {"url": "http://admin:hunter2-influx@127.0.0.1:8086"},
        "webhooks": {"url": "https://hooks:hunter2-hook@dispatch.example/in",
                     "routes": [{"name": "gas", "url": "https://u:hunter2-route@gas.example/x"}]},
    })
    done = _cli(config, "config")
    assert done.returncode == 0, done
    assert "hunter2" not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["mqtt"]["url"] == "mqtt://collector:***@127.0.0.1:1883"
    assert shown["influx"]["url"] == "http://admin:***@127.0.0.1:8086"
    assert shown["webhooks"]["routes"][0]["url"] == "https://u:***@gas.example/x"
    # and should one be logged, the log filter masks it too
    s = load_settings(config)
    assert {"hunter2-mqtt", "hunter2-influx", "hunter2-hook", "hunter2-route"} <= set(configured_secrets(s))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "connecting to %s", (s.mqtt.url,), None)
    RedactSecrets(configured_secrets(s)).filter(record)
    assert record.getMessage() == "connecting to mqtt://collector:***@127.0.0.1:1883"


@pytest.mark.parametrize("text,masked", [
    ("mqtt://u:p@h:1", "mqtt://u:***@h:1"),
    ("http://h:8086/x", "http://h:8086/x"),
    ("https://only-user@h/", "https://only-user@h/"),
    ("see http://a:b%40c@h/p?q=1 and mqtts://x:y@z", "see http://a:***@h/p?q=1 and mqtts://x:***@z"),
])
def test_mask_url_credentials(text: str, masked: str) -> None:
    assert mask_url_credentials(text) == masked


@pytest.mark.parametrize("host,warned", [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("::1", False)])
def test_an_api_on_every_interface_is_warned_about_at_start(tmp_path: Path, host: str, warned: bool,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    s = load_settings(None, {"data_dir": tmp_path, "api": {"host": host}})
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(s)  # what `citywatch run` does at start; logs to stderr
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [line for line in capsys.readouterr().err.splitlines() if "reachable from the network" in line]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert " WARNING " in lines[0] and f"api.host {host}" in lines[0]
