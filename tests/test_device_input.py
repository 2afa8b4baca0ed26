"""Installers' input to `citywatch devices ...`: control characters refused, bad files and pids
answered with one clear line (never a traceback), and nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.devices import credentials
from citywatch.devices.credentials import CredentialError, reload_broker
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device


@pytest.fixture
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records instead of signalling: a regression here would SIGHUP every process on the machine."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(credentials.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


@pytest.mark.parametrize("text", ["-1", "0", "1", " -1\n"])
def test_reload_refuses_pids_that_signal_more_than_one_process(tmp_path: Path, no_signals: list[Any],
                                                                text: str) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(text)
    with pytest.raises(CredentialError, match="above 1"):
        reload_broker(pid_file=pid_file)
    with pytest.raises(CredentialError, match="above 1"):
        reload_broker(pid=int(text))
    assert no_signals == []


def test_reload_refuses_a_process_that_is_not_mosquitto(no_signals: list[Any]) -> None:
    with pytest.raises(CredentialError, match="not mosquitto"):
        reload_broker(pid=os.getpid())  # this pytest process
    assert no_signals == []


# -- the CLI ------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **mqtt: object) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "api": {"port": 0},
                                      "mqtt": {"url": "mqtt://127.0.0.1:1", **mqtt}}))
    return config


def _cli(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert isinstance(result.exception, SystemExit | None), result.exception  # a message, never a traceback
    return result


def _registered(tmp_path: Path) -> dict[str, Device]:
    registry = Registry(registry_path(tmp_path / "data"))
    try:
        return {d.id: d for d in registry.all()}
    finally:
        registry.close()


@pytest.mark.parametrize("option,value", [
    ("--district", "Nan\nhu"), ("--district", "Nanhu\r"), ("--grid", "G1\tG2"), ("--address", "12 Main St\x1b[2J"),
    ("--address", "12 Main St\x00"), ("--address", "12 Main\u2028St"), ("--address", "\u202eevil"),
    ("--address", "x" * 201),
])
def test_control_characters_in_free_text_are_refused_by_add_and_update(tmp_path: Path, option: str,
                                                                         value: str) -> None:
    config = _config(tmp_path)
    name = option.lstrip("-")
    refused = _cli(config, "devices", "add", "gas-1", "--kind", "gas", option, value)
    assert refused.exit_code == 1 and f"Error: {name}" in refused.output
    assert _registered(tmp_path) == {}
    assert _cli(config, "devices", "add", "gas-1", "--kind", "gas", option, "fine").exit_code == 0
    refused = _cli(config, "devices", "update", "gas-1", option, value)
    assert refused.exit_code == 1 and f"Error: {name}" in refused.output
    assert getattr(_registered(tmp_path)["gas-1"], name) == "fine"


def test_chinese_addresses_are_fine(tmp_path: Path) -> None:
    config = _config(tmp_path)
    added = _cli(config, "devices", "add", "gas-1", "--kind", "gas", "--district", "南湖区",
                 "--address", "中山路12号 3单元")
    assert added.exit_code == 0, added.output
    assert _registered(tmp_path)["gas-1"].address == "中山路12号 3单元"


def test_import_refuses_a_newline_in_a_cell_with_the_lines_of_the_record(tmp_path: Path) -> None:
    config = _config(tmp_path)
    csv = tmp_path / "street.csv"
    csv.write_text('id,kind,district,address\ngas-1,gas,Nanhu,"12 Main\nSt"\ngas-2,gas,"Nan\thu",ok\n'
                   'gas-3,gas,Nanhu,"\x1b]0;pwned\x07"\ngas-4,gas,Nanhu,fine\n')
    result = _cli(config, "devices", "import", str(csv), "--secrets-out", str(tmp_path / "s.csv"))
    assert result.exit_code == 1
    assert "line 2-3: address '12 Main\\\\nSt'" in result.output
    assert "line 4: district" in result.output and "line 5: address" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert _registered(tmp_path) == {} and not (tmp_path / "s.csv").exists()


def test_import_of_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "street.csv"
    csv.write_bytes(b"id,kind,address\ngas-1,gas,ok\ngas-2,gas,Stra\xdfe 1\n")  # Latin-1, as some spreadsheets save
    result = _cli(_config(tmp_path), "devices", "import", str(csv), "--dry-run")
    assert result.exit_code == 1 and "line 3: not UTF-8 (byte 0xdf)" in result.output


def test_import_of_an_oversized_cell_is_one_clear_error(tmp_path: Path) -> None:
    csv = tmp_path / "street.csv"
    csv.write_text("id,kind,address\ngas-1,gas,ok\ngas-2,gas," + "x" * 200_000 + "\n")
    result = _cli(_config(tmp_path), "devices", "import", str(csv), "--dry-run")
    assert result.exit_code == 1 and "line 3: field larger than field limit" in result.output


@pytest.mark.parametrize("args,says", [
    (("--kind", "gas", "--threshold", "gas.level1_pct=80"), "gas.level1_pct (80) must be below gas.level2_pct (50)"),
    (("--kind", "gas", "--threshold", "gas.level2_pct=20"), "gas.level1_pct (25) must be below gas.level2_pct (20)"),
    (("--kind", "water", "--threshold", "water.moderate_cm=30"),
     "water.moderate_cm (30) must be below water.severe_cm (25)"),
    (("--kind", "gas", "--threshold", "battery.low_pct=25"),
     "battery.low_pct (25) must be below rules.health.battery_clear_pct (20)"),
])
def test_per_device_thresholds_may_not_contradict_the_levels(tmp_path: Path, args: tuple[str, ...],
                                                             says: str) -> None:
    result = _cli(_config(tmp_path), "devices", "add", "d-1", *args)
    assert result.exit_code == 1 and says in result.output
    ok = _cli(_config(tmp_path), "devices", "add", "d-1", "--kind", "gas", "--threshold", "gas.level1_pct=20",
              "--threshold", "gas.level2_pct=40")
    assert ok.exit_code == 0, ok.output


def test_the_device_config_never_carries_the_collectors_login_from_the_url(tmp_path: Path) -> None:
    config = _config(tmp_path, url="mqtt://collector:hunter2-pw@broker.example:1883")
    added = _cli(config, "devices", "add", "gas-1", "--kind", "gas")
    assert added.exit_code == 0, added.output
    assert "hunter2" not in added.output
    assert yaml.safe_load(added.stdout)["broker_url"] == "mqtt://broker.example:1883"
    csv = tmp_path / "street.csv"
    csv.write_text("id,kind\ngas-2,gas\n")
    assert _cli(config, "devices", "import", str(csv), "--secrets-out", str(tmp_path / "s.csv")).exit_code == 0
    assert "hunter2" not in (tmp_path / "s.csv").read_text()
    check = _cli(config, "devices", "check", "gas-1", "--timeout", "0.1")
    assert "hunter2" not in check.output and "collector:***@broker.example" in check.output


def test_mosquitto_auth_into_a_directory_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _cli(config, "devices", "add", "gas-1", "--kind", "gas").exit_code == 0
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = _cli(config, "devices", "mosquitto-auth", "--out", str(blocker / "auth"))
    assert result.exit_code == 1 and "cannot write the broker files" in result.output


def test_cli_reload_refuses_pid_minus_one(tmp_path: Path, no_signals: list[Any]) -> None:
    config = _config(tmp_path)
    result = _cli(config, "devices", "mosquitto-auth", "--out", str(tmp_path / "auth"), "--reload", "--pid", "-1")
    assert result.exit_code == 1 and "above 1" in result.output
    assert no_signals == []


def test_a_bad_reload_target_is_refused_before_the_files_are_replaced(tmp_path: Path, no_signals: list[Any]) -> None:
    config = _config(tmp_path)
    out = tmp_path / "auth"
    # no pid at all is a usage error (2); a pid that is not Mosquitto's is refused as the world's (1)
    for extra, code in (((), 2), (("--pid", "0"), 1), (("--pid", str(os.getpid())), 1)):
        result = _cli(config, "devices", "mosquitto-auth", "--out", str(out), "--reload", *extra)
        assert result.exit_code == code, result.output
        assert not out.exists()
    assert no_signals == []
