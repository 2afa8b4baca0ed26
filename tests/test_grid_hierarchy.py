"""The grid hierarchy in the registry: a device's community (or street) and city, beside its grid and
district; entered by installers (add, update, import), shown (list, show), checked like the other free
text, carried in every alert's device block, and read from registry files written before they existed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.importer import CsvImportError, parse_csv
from citywatch.devices.registry import Registry, registry_path
from citywatch.model import Device, Output
from citywatch.streams.pipeline import Pipeline
from tests.conftest import make_settings
from tests.helpers import T0, payload

ZONES = ("0", "1", "2", "3", "4a", "4b")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "mqtt": {"url": "mqtt://broker.test:1883"}}))
    return path


def cli(config: Path, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def registry_of(config: Path) -> Registry:
    return Registry(registry_path(Path(yaml.safe_load(config.read_text())["data_dir"])))


def test_add_update_list_and_show_carry_community_and_city(config: Path) -> None:
    cli(config, "devices", "add", "g1", "--kind", "gas", "--district", "Nanhu", "--grid", "G1",
        "--community", "Jianshe St", "--city", "Jiaxing")
    cli(config, "devices", "add", "g2", "--kind", "gas", "--district", "Nanhu", "--grid", "G2",
        "--community", "Xinxing", "--city", "Jiaxing")
    cli(config, "devices", "add", "w1", "--kind", "water", "--district", "Xiuzhou", "--grid", "G9")
    shown = json.loads(cli(config, "devices", "show", "g1", "--json").stdout)
    assert (shown["community"], shown["city"]) == ("Jianshe St", "Jiaxing")
    assert "community: Jianshe St" in cli(config, "devices", "show", "g1").stdout

    def ids(*filters: str) -> list[str]:
        return [d["id"] for d in json.loads(cli(config, "devices", "list", "--json", *filters).stdout)]

    assert ids("--community", "Xinxing") == ["g2"]
    assert ids("--city", "Jiaxing") == ["g1", "g2"]
    assert ids("--city", "Jiaxing", "--grid", "G1") == ["g1"]
    rows = [line.split("\t") for line in cli(config, "devices", "list").stdout.splitlines()]
    assert rows[0][:6] == ["g1", "gas", "Jiaxing", "Nanhu", "Jianshe St", "G1"]
    assert rows[2][:6] == ["w1", "water", "-", "Xiuzhou", "-", "G9"]

    cli(config, "devices", "update", "w1", "--community", "Nanxi Rd", "--city", "Jiaxing")
    assert ids("--community", "Nanxi Rd") == ["w1"]
    cli(config, "devices", "update", "w1", "--unset", "community")
    registry = registry_of(config)
    try:
        w1 = registry.require("w1")
        assert (w1.community, w1.city, w1.grid) == ("", "Jiaxing", "G9")
    finally:
        registry.close()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--community", "Jianshe\nSt", "community"),
    ("--city", "Jia\x1bxing", "city"),
    ("--community", "x" * 201, "community: 201 characters"),
])
def test_community_and_city_are_checked_like_other_free_text(config: Path, option: str, value: str,
                                                             message: str) -> None:
    result = cli(config, "devices", "add", "g1", "--kind", "gas", option, value, code=1)
    assert message in result.output
    cli(config, "devices", "add", "g1", "--kind", "gas")
    assert message in cli(config, "devices", "update", "g1", option, value, code=1).output
    registry = registry_of(config)
    try:
        assert (registry.require("g1").community, registry.require("g1").city) == ("", "")
    finally:
        registry.close()


def test_import_accepts_optional_community_and_city_columns() -> None:
    text = ("id,kind,district,grid,community,city\n"
            "g1,gas,Nanhu,G1,Jianshe St,Jiaxing\n"
            "g2,gas,Nanhu,G2,,\n")
    g1, g2 = parse_csv(text, set(), ZONES)
    assert (g1.community, g1.city) == ("Jianshe St", "Jiaxing")
    assert (g2.community, g2.city) == ("", "")
    assert [d.id for d in parse_csv("id,kind,grid\ng3,water,G3\n", set(), ZONES)] == ["g3"]  # columns optional
    with pytest.raises(CsvImportError) as bad:
        parse_csv("id,kind,community\ng4,gas,\"two\nlines\"\n", set(), ZONES)
    [error] = bad.value.errors
    assert error.startswith("line 2-3: community ") and "one line of text" in error


def test_a_registry_written_before_the_hierarchy_reads_with_empty_levels(tmp_path: Path) -> None:
    """Attributes are JSON in the `attrs` column: rows written before community and city existed read with
    the defaults and can be updated; attributes a newer version added are ignored, not fatal."""
    path = registry_path(tmp_path)
    Registry(path).close()  # the schema
    conn = sqlite3.connect(path)
    old: dict[str, Any] = {"district": "Nanhu", "grid": "G1", "address": "", "lat": None, "lon": None,
                           "zone_class": None, "interval_s": 60.0, "tenants": None, "max_stay_min": None,
                           "no_parking": False, "thresholds": {}}
    newer = {**old, "community": "Xinxing", "city": "Jiaxing", "floor": 3}
    conn.executemany("INSERT INTO devices (id, kind, attrs, enabled, password_hash, created_at, updated_at)"
                     " VALUES (?, 'gas', ?, 1, NULL, 1.0, 1.0)", [("old", json.dumps(old)), ("new", json.dumps(newer))])
    conn.commit()
    conn.close()
    registry = Registry(path)
    try:
        assert registry.require("old") == Device(id="old", kind="gas", district="Nanhu", grid="G1", created_at=1.0)
        assert registry.require("new").community == "Xinxing"
        registry.update("old", {"community": "Jianshe St", "city": "Jiaxing"})
        assert (registry.require("old").community, registry.require("old").city) == ("Jianshe St", "Jiaxing")
    finally:
        registry.close()


def test_every_alert_carries_the_devices_place_in_the_hierarchy(tmp_path: Path) -> None:
    device = Device(id="g1", kind="gas", district="Nanhu", grid="G1", community="Jianshe St", city="Jiaxing")
    settings = make_settings(tmp_path)
    pipeline = Pipeline(settings, {"g1": device}, AlertEngine(settings.alerts), started_at=T0)
    out = Output()
    pipeline.process("citywatch/gas/g1/telemetry", payload(T0, lel_pct=30.0), T0, out)
    [opened] = out.transitions
    where = opened.alert.device
    assert (where["city"], where["district"], where["community"], where["grid"]) == (
        "Jiaxing", "Nanhu", "Jianshe St", "G1")
