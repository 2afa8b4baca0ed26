"""A kind is declared in one place (issue 16 item 3): citywatch/kinds/<kind>.py, and the rest of the code
reads it from there.

The first tests check each declaration against what the code built from it. The last one is the proof:
it adds a seventh kind (manhole-cover sensors, which a city's road department runs) to a copy of the
package by writing its declaration and its rule module, and nothing else, then checks in a fresh
interpreter that every part of citywatch knows it: the schema and dead letters, the settings and the
environment, the registry's threshold keys, the rules and their life-safety policy, the pipeline's
alerts, the incident groups, the dashboards, the report, `citywatch schema` and `citywatch replay`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from citywatch.alert_text import TEMPLATES
from citywatch.config import SAFETY_RULES, IncidentSettings, Settings
from citywatch.dashboards.panels import sensors
from citywatch.detectors.registry import build_rules
from citywatch.devices.registry import THRESHOLD_KEYS
from citywatch.ingest.schemas import KIND_FIELDS, PAYLOAD_TYPES, json_schema
from citywatch.kinds import KINDS, spec, specs
from citywatch.labels import codes
from tests.runner_process import ROOT

KIND_FILES = sorted(p.stem for p in (ROOT / "citywatch" / "kinds").glob("*.py") if not p.stem.startswith("_"))


def test_the_kinds_are_the_modules_of_the_kinds_package() -> None:
    assert tuple(KIND_FILES) == KINDS
    assert {"gas", "noise", "water", "parking", "lock", "smoke"} <= set(KINDS)
    with pytest.raises(KeyError):
        spec("volcano")


@pytest.mark.parametrize("kind", KINDS)
def test_the_code_builds_each_kind_from_its_declaration(kind: str) -> None:
    declared = spec(kind)
    assert declared.name == kind
    assert KIND_FIELDS[kind] == declared.fields
    assert set(PAYLOAD_TYPES[kind].__struct_fields__) >= set(declared.fields)
    assert f"{kind.capitalize()}Payload" in json_schema()["$defs"]
    rules = {rule.name for rule in build_rules(Settings())[kind]}
    assert declared.safety_rules <= rules and declared.safety_rules <= SAFETY_RULES
    assert {t.key for t in declared.thresholds} <= THRESHOLD_KEYS
    assert all(t.key.startswith(f"{kind}.") for t in declared.thresholds)
    assert declared.label in codes("kind")
    assert set(declared.rule_labels) <= codes("rule")
    own = {name for name in rules if name.startswith(f"{kind}_")}
    assert own <= set(declared.rule_labels), "each rule of the kind has a label"
    assert set(declared.messages) <= set(TEMPLATES)
    group, patterns = declared.hazard_group
    assert IncidentSettings().groups[group] == list(patterns)
    if declared.settings is not None:
        rules_settings = Settings().rules
        section = rules_settings.section(declared.settings)
        assert getattr(rules_settings, kind) is section
        for t in declared.thresholds:
            if t.setting:
                assert isinstance(getattr(section, t.setting), float)
    assert declared.chart_field in declared.fields


def test_the_sensors_dashboard_has_one_row_per_declared_row() -> None:
    rows = [row.title for row in sensors().rows]
    assert len(rows) == sum(1 for k in specs().values() if k.dashboard_row is not None)
    assert "Smoke" in rows and "Gas" in rows


MANHOLE_KIND = '''
"""Manhole-cover sensors on roads: tilt of the cover and whether it is off its frame. An open manhole
swallows people and bicycles: `manhole_open` is a life-safety rule."""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, SimKind
from citywatch.kindspec import KindSpec, Measure, PayloadField, Threshold
from citywatch.section import Section


class ManholeRules(Section):
    tilt_alarm_deg: float = Field(15.0, gt=0, le=90)


class ManholeSim(SimKind):
    """Covers resting flat (a little vibration from traffic); now and then one is lifted off."""

    slots = (20,)
    incidents = {"manhole_lifted": ("manhole_open",)}
    valid_fields = {"tilt_deg": 0.5, "open": False}
    too_big = ("tilt_deg", 500.0)

    def normal(self, i: int, t: float) -> dict[str, Any]:
        return {"tilt_deg": round(self.sim.rng.random() * 0.8, 1), "open": False}

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name != "manhole_lifted":
            return super().script(name, i, k0, k_min, k_max, rng)
        inc = Incident(name, i, k0, 2)
        inc.values = [{"tilt_deg": 35.0, "open": True}, {"tilt_deg": 0.4, "open": False}]
        return inc


SPEC = KindSpec(
    name="manhole",
    label=NP_("kind", "manhole"),
    payload=(
        PayloadField(NP_("reading field", "tilt_deg"), float, "tilt of the cover, degrees", ge=0, le=90),
        PayloadField("open", bool, "the cover is off its frame"),
    ),
    chart_field="tilt_deg",
    chart_unit="deg",
    measure=Measure("tilt_deg", 0.5, max_step_per_min=None, rest_value=0.0),
    settings=ManholeRules,
    thresholds=(Threshold("manhole.tilt_alarm_deg", "tilt_alarm_deg"),),
    rules="citywatch.detectors.manhole",
    safety_rules=frozenset({"manhole_open"}),
    hazard_group=("road", ("manhole_*",)),
    rule_labels=(NP_("rule", "manhole_open"),),
    messages={"manhole_open": N_("manhole cover open or tilted {value} degrees (alarm from {threshold})")},
    simulator=ManholeSim,
)
'''

MANHOLE_RULES = '''
"""The manhole kind's rule: the cover is open or tilted past the alarm angle. Latched until a person
closes it."""

from __future__ import annotations

from citywatch.detectors.base import Verdict, found, threshold
from citywatch.detectors.kindrules import KindRules, RuleContext
from citywatch.detectors.record import DeviceRecord
from citywatch.kinds.manhole import ManholeRules
from citywatch.model import Device, Finding, Reading


class ManholeOpen:
    name = "manhole_open"
    kinds = frozenset({"manhole"})
    in_order_only = False
    v1_key = ""

    def __init__(self, rules: ManholeRules) -> None:
        self.rules = rules

    def fresh(self) -> None:
        return None

    def evaluate(self, reading: Reading, device: Device, record: DeviceRecord, state: None) -> Verdict:
        tilt = reading.values["tilt_deg"]
        limit = threshold(device, "manhole.tilt_alarm_deg", self.rules.tilt_alarm_deg)
        if reading.values["open"] or tilt >= limit:
            return found(Finding(self.name, True, "critical", tilt, limit,
                                 f"manhole cover open or tilted {tilt:g} degrees (alarm from {limit:g})",
                                 latched=True))
        return None, 0.0


def rules(ctx: RuleContext) -> KindRules:
    return KindRules([ManholeOpen(ctx.section(ManholeRules))])
'''

PROBE = '''
import csv, json, subprocess, sys
from pathlib import Path

import citywatch
assert Path(citywatch.__file__).is_relative_to(Path(sys.argv[1])), citywatch.__file__
from citywatch.kinds import KINDS
from citywatch.config import SAFETY_RULES, IncidentSettings, load_settings
from citywatch.errors import InvalidMessage
from citywatch.ingest.schemas import json_schema, parse_telemetry
from citywatch.devices.registry import THRESHOLD_KEYS, validate_thresholds
from citywatch.dashboards.panels import sensors
from citywatch.model import Device
from tests.helpers import T0, feed, make_pipeline

seen = {"kinds": list(KINDS), "safety": "manhole_open" in SAFETY_RULES,
        "group": IncidentSettings().groups.get("road"), "keys": "manhole.tilt_alarm_deg" in THRESHOLD_KEYS}
reading = parse_telemetry("manhole", "mh-1", b'{"ts": %d, "tilt_deg": 3.5, "open": false}' % T0, T0)
seen["reading"] = reading.values
try:
    parse_telemetry("manhole", "mh-1", b'{"ts": %d, "tilt_deg": 120, "open": false}' % T0, T0)
except InvalidMessage as exc:
    seen["dead_letter"] = [exc.reason, exc.field]
seen["schema"] = sorted(json_schema()["$defs"]["ManholePayload"]["properties"])
seen["setting"] = load_settings(None, {}).rules.manhole.tilt_alarm_deg
validate_thresholds("manhole", {"manhole.tilt_alarm_deg": 20.0})
p = make_pipeline(Device(id="mh-1", kind="manhole", grid="G1"))
out = feed(p, Device(id="mh-1", kind="manhole", grid="G1"), T0, tilt_deg=2.0, open=False)
seen["quiet"] = [t.alert.rule for t in out.transitions]
out = feed(p, Device(id="mh-1", kind="manhole", grid="G1"), T0 + 60, tilt_deg=40.0, open=False)
seen["opened"] = [[t.alert.rule, t.alert.severity, t.alert.safety] for t in out.transitions]
seen["rules"] = [rule.name for rule in p.rules["manhole"]]
seen["dashboard"] = [row.title for row in sensors().rows]

# the simulator makes manhole devices and lifts a cover; the core opens the alarm for it
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.ingest.simulator import Simulator, bad_messages, make_devices
from citywatch.model import Output
from citywatch.streams.pipeline import Pipeline

devices = make_devices(42, seed=1)
seen["simulated"] = sorted({d.kind for d in devices})
sim = Simulator(devices, seed=1, start=T0, horizon_s=1800)
settings = load_settings(None, {})
core = Pipeline(settings, {d.id: d for d in devices}, AlertEngine(settings.alerts), started_at=T0)
out = Output()
for topic, body, ts in sim.messages(3600):
    core.process(topic, body, ts, out)
seen["incidents"] = sorted({e["incident"] for e in sim.incidents_log if e["kind"] == "manhole"})
opened = [t.alert for t in out.transitions if t.transition == "opened"]
seen["alarms"] = sorted({alert.rule for alert in opened if alert.kind == "manhole"})
seen["bad"] = len(bad_messages([d for d in devices if d.kind == "manhole"], now=T0))
print(json.dumps(seen))
'''


def copy_package(dest: Path) -> Path:
    """The package as plain Python (compiled modules left out), in `dest`."""
    shutil.copytree(ROOT / "citywatch", dest / "citywatch",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "build"))
    return dest / "citywatch"


def test_a_seventh_kind_is_its_declaration_and_its_rule_module(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    before = {p.relative_to(package) for p in package.rglob("*") if p.is_file()}
    (package / "kinds" / "manhole.py").write_text(textwrap.dedent(MANHOLE_KIND))
    (package / "detectors" / "manhole.py").write_text(textwrap.dedent(MANHOLE_RULES))
    after = {p.relative_to(package) for p in package.rglob("*") if p.is_file()}
    assert after - before == {Path("kinds/manhole.py"), Path("detectors/manhole.py")}

    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYWATCH_")}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "manhole" in seen["kinds"]
    assert seen["safety"] is True and seen["group"] == ["manhole_*"] and seen["keys"] is True
    assert seen["reading"] == {"tilt_deg": 3.5, "open": False}
    assert seen["dead_letter"] == ["out_of_range", "tilt_deg"]
    assert {"tilt_deg", "open", "ts"} <= set(seen["schema"])
    assert seen["setting"] == 15.0
    assert seen["quiet"] == []
    assert seen["opened"] == [["manhole_open", "critical", True]]  # life safety: at the first reading
    assert seen["rules"][0] == "sensor_stuck" and "manhole_open" in seen["rules"] and "battery_low" in seen["rules"]
    assert "Manhole" not in seen["dashboard"]  # it declared no dashboard row: the others are unchanged
    assert "manhole" in seen["simulated"] and "manhole_lifted" in seen["incidents"]
    assert "manhole_open" in seen["alarms"]
    assert seen["bad"] > 5  # the simulator's bad input, on a manhole device

    # the command line knows it too: `citywatch schema` and `citywatch replay --kind manhole`
    schema = subprocess.run([sys.executable, "-m", "citywatch", "schema"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert schema.returncode == 0, schema.stderr
    assert "ManholePayload" in schema.stdout
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("timestamp,tilt_deg,open\n1767225600,1.0,0\n1767225660,2.0,no\n1767225720,3.0,yes\n")
    replay = subprocess.run([sys.executable, "-m", "citywatch", "replay", str(src), "--out", str(out), "--kind",
                             "manhole"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    rows = out.read_text().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["0", "0", "1"]
    assert "manhole_open" in rows[3]
