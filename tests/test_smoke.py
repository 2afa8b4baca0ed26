"""The smoke kind (residential smoke alarms in rented housing): alarm at once and latched, from the flag or
from the measured obscuration; smoke building up; tamper; low battery; a test press is not a fire; bad
payloads dead-lettered; per-device thresholds checked; through `citywatch replay --kind smoke`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import SAFETY_RULES, RuleSettings, load_settings
from citywatch.devices.attributes import check_threshold_order
from citywatch.errors import ConfigError, DeviceError
from citywatch.model import Device, Output
from citywatch.streams.pipeline import Pipeline
from tests.helpers import T0, feed, make_pipeline, payload
from tests.runner_process import ROOT

SMOKE = Device(id="smoke-1", kind="smoke", district="Nanhu", grid="G1")


def opened(out: Output) -> list[tuple[str, str]]:
    return [(t.alert.rule, t.alert.severity) for t in out.transitions if t.transition == "opened"]


def transitions(out: Output) -> list[tuple[str, str]]:
    return [(t.alert.rule, t.transition) for t in out.transitions]


def reading(pipeline: Pipeline, at: float, obscuration: float, alarm: bool, event: str | None = None) -> Output:
    fields: dict[str, Any] = {"obscuration_pct_per_m": obscuration, "alarm": alarm}
    if event is not None:
        fields["event"] = event
    return feed(pipeline, SMOKE, at, **fields)


def test_the_alarm_and_tamper_are_life_safety_rules() -> None:
    assert {"smoke_alarm", "smoke_tamper"} <= SAFETY_RULES
    with pytest.raises(ConfigError, match="smoke_alarm"):
        load_settings(None, {"alerts": {"rules": {"smoke_alarm": {"hold_s": 60}}}})


def test_the_first_sounding_reading_opens_the_alarm_and_only_a_person_closes_it() -> None:
    p = make_pipeline(SMOKE)
    assert opened(reading(p, T0, 0.4, True)) == [("smoke_alarm", "critical")]
    for i in range(1, 6):  # the smoke clears, the sounder stops: a fire panel stays latched
        assert transitions(reading(p, T0 + 60 * i, 0.1, False)) == []
    assert p.alerts.by_id and all(a.status == "open" for a in p.alerts.by_id.values())


def test_obscuration_at_the_alarm_level_opens_the_alarm_even_when_the_device_does_not_sound() -> None:
    p = make_pipeline(SMOKE)
    assert reading(p, T0, 0.2, False).transitions == []
    out = reading(p, T0 + 60, 6.0, False)  # a failed sounder or alarm logic; the chamber measures smoke
    assert ("smoke_alarm", "critical") in opened(out)
    alarm = next(t.alert for t in out.transitions if t.alert.rule == "smoke_alarm")
    assert alarm.value == 6.0 and alarm.threshold == 4.0 and alarm.safety is True


def test_a_test_press_is_not_a_fire_but_smoke_during_a_test_is() -> None:
    p = make_pipeline(SMOKE)
    assert reading(p, T0, 0.3, True, "test").transitions == []
    assert sorted(opened(reading(p, T0 + 60, 5.0, True, "test"))) == [("smoke_alarm", "critical"),
                                                                     ("smoke_rising", "warning")]


def test_smoke_building_up_warns_below_the_alarm_and_clears_with_hysteresis() -> None:
    p = make_pipeline(SMOKE)
    assert opened(reading(p, T0, 1.6, False)) == [("smoke_rising", "warning")]
    assert transitions(reading(p, T0 + 60, 1.3, False)) == []  # within the hysteresis (0.3)
    assert transitions(reading(p, T0 + 120, 1.1, False)) == [("smoke_rising", "resolved")]


def test_tamper_is_latched_and_low_battery_is_the_battery_rule() -> None:
    p = make_pipeline(SMOKE)
    assert opened(reading(p, T0, 0.0, False, "tamper")) == [("smoke_tamper", "warning")]
    assert transitions(reading(p, T0 + 60, 0.0, False)) == []
    out = reading(p, T0 + 120, 0.0, False, "low_battery")
    assert opened(out) == [("battery_low", "warning")]
    assert out.transitions[0].alert.message == "smoke reports low battery"


@pytest.mark.parametrize(("body", "reason", "field"), [
    ({"obscuration_pct_per_m": 0.1}, "missing_field", "alarm"),
    ({"alarm": False}, "missing_field", "obscuration_pct_per_m"),
    ({"obscuration_pct_per_m": 0.1, "alarm": "yes"}, "wrong_type", "alarm"),
    ({"obscuration_pct_per_m": 150, "alarm": False}, "out_of_range", "obscuration_pct_per_m"),
    ({"obscuration_pct_per_m": 0.1, "alarm": False, "event": "fire"}, "bad_value", "event"),
])
def test_bad_smoke_payloads_are_dead_letters_naming_the_field(body: dict[str, Any], reason: str, field: str) -> None:
    p = make_pipeline(SMOKE)
    out = Output()
    p.process("citywatch/smoke/smoke-1/telemetry", payload(T0, **body), T0, out)
    assert [(d.reason, d.field) for d in out.dead_letters] == [(reason, field)]


def test_per_device_thresholds_apply_and_must_stay_in_order() -> None:
    sensitive = Device(id="smoke-kitchen", kind="smoke", thresholds={"smoke.alarm_pct_per_m": 8.0,
                                                                     "smoke.pre_alarm_pct_per_m": 5.0})
    p = make_pipeline(sensitive)
    out = feed(p, sensitive, T0, obscuration_pct_per_m=6.0, alarm=False)  # kitchen: cooking smoke is normal
    assert opened(out) == [("smoke_rising", "warning")]
    with pytest.raises(DeviceError, match="smoke.pre_alarm_pct_per_m"):
        check_threshold_order(Device(id="smoke-bad", kind="smoke", thresholds={"smoke.pre_alarm_pct_per_m": 5.0,
                                                                                "smoke.alarm_pct_per_m": 3.0}),
                              RuleSettings())


def test_replay_kind_smoke_marks_the_alarming_row(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("timestamp,obscuration_pct_per_m,alarm,event\n"
                   f"{T0:.0f},0.2,0,\n{T0 + 60:.0f},0.3,1,test\n{T0 + 120:.0f},2.0,0,\n{T0 + 180:.0f},4.5,1,\n")
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-m", "citywatch", "replay", str(src), "--out", str(out),
                           "--kind", "smoke"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["is_alert"] for r in rows] == ["0", "0", "1", "1"]
    assert rows[2]["rules"] == "smoke_rising" and "smoke_alarm" in rows[3]["rules"]
