"""What devices send (payloads, topics) and what was registered before the checks reach an
operator's terminal escaped: no raw escape sequence is ever printed; --json stays exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.devices.commissioning import CheckResult, Heard, render
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device, Output
from citywatch.sinks.store import AlertStore, store_path
from citywatch.terminal import for_terminal
from tests.helpers import T0, make_pipeline

HOSTILE = "\x1b[2J\x1b]0;pwned\x07"
RAW = ("\x1b", "\x07", "\x9b")


def test_for_terminal_escapes_c0_del_c1_and_bidi_overrides() -> None:
    text = "a" + HOSTILE + "\x00\t\n\r\x7f\x85\x9b\u202e\u2028b 中文 ok"
    shown = for_terminal(text)
    assert shown == ("a\\x1b[2J\\x1b]0;pwned\\x07\\x00\\t\\n\\r\\x7f\\x85\\x9b\\u202e\\u2028b 中文 ok")
    assert all(c.isprintable() for c in shown)


def _invoke(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_deadletters_prints_escape_sequences_escaped_and_json_exactly(tmp_path: Path) -> None:
    gas = Device(id="g1", kind="gas")
    p = make_pipeline(gas)
    out = Output()
    payload = (f'{{"ts": {T0:.0f}, "lel_pct": "' + HOSTILE + '"}').encode()
    p.process("citywatch/gas/g1/telemetry", payload, T0, out)  # raw control characters: malformed_json
    p.process("citywatch/gas/x\x1b[31m/telemetry", b"{}", T0, out)  # bad_topic, topic kept
    assert [d.reason for d in out.dead_letters] == ["malformed_json", "bad_topic"]
    store = AlertStore(store_path(tmp_path))
    store.commit(out, [], {})
    store.close()

    shown = _invoke(tmp_path, "deadletters")
    assert not any(c in shown for c in RAW)
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in shown and "x\\x1b[31m/telemetry" in shown

    listed = json.loads(_invoke(tmp_path, "deadletters", "--json"))
    assert {d["payload"] for d in listed} == {payload.decode(), "{}"}
    assert "citywatch/gas/x\x1b[31m/telemetry" in {d["topic"] for d in listed}


def test_devices_list_and_show_escape_attributes_registered_before_the_checks(tmp_path: Path) -> None:
    registry = Registry(registry_path(tmp_path))
    registry.add(Device(id="g1", kind="gas", district="Nan\nhu", address="12 Main St" + HOSTILE))
    registry.close()
    for args in (("devices", "list"), ("devices", "show", "g1")):
        shown = _invoke(tmp_path, *args)
        assert not any(c in shown for c in RAW) and "Nan\nhu" not in shown
        assert "Nan\\nhu" in shown and "12 Main St\\x1b[2J" in shown
    assert json.loads(_invoke(tmp_path, "devices", "show", "g1", "--json"))["district"] == "Nan\nhu"


@pytest.mark.parametrize("outcome", ["accepted", "dead_letter"])
def test_commissioning_report_escapes_the_device_message(outcome: str) -> None:
    device = Device(id="g1", kind="gas", address="Main" + HOSTILE)
    heard = Heard("citywatch/gas/g1/telemetry", ('{"ts": 1, "x": "' + HOSTILE + '"}').encode(), False, T0)
    result = CheckResult(device=device, outcome=outcome, message=heard, reason="wrong_type",
                         detail="detail " + HOSTILE)
    shown = render(result)
    assert not any(c in shown for c in RAW)
    assert shown.count("\\x1b[2J") >= 2
