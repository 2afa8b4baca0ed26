"""The installers' registry: CLI, CSV import, validation, live updates to a running pipeline, enrichment."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.devices.credentials import verify_password
from citywatch.devices.importer import CsvImportError, import_csv, parse_csv
from citywatch.devices.registry import Registry, RegistryCache, registry_path, validate_device
from citywatch.errors import DeviceError
from citywatch.model import Device, Output
from citywatch.sinks.lineprotocol import reading_line
from citywatch.sinks.outbox import render_payload
from citywatch.streams.pipeline import Pipeline
from tests.conftest import RunnerThread, make_settings, wait_until
from tests.helpers import T0, payload
from tests.mqtt_tools import publish_all
from tests.servers.mosquitto import MosquittoServer

ZONES = ("0", "1", "2", "3", "4a", "4b")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "mqtt": {"url": "mqtt://broker.test:1883"}}))
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(registry_path(tmp_path / "data"))
    yield r
    r.close()


def cli(config: Path, *args: str, code: int = 0, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args], input=stdin)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def password_hash(registry: Registry, device_id: str) -> str:
    return str(registry.conn.execute("SELECT password_hash FROM devices WHERE id = ?", (device_id,)).fetchone()[0])


# -- add, show, list, update, enable, disable, rotate, remove -------------------------------------------


def test_add_prints_the_password_once_and_stores_only_its_hash(config: Path, registry: Registry) -> None:
    result = cli(config, "devices", "add", "gas-1", "--kind", "gas", "--district", "Nanhu", "--grid", "G1",
                 "--address", "1 Zhongshan Rd", "--lat", "30.75", "--lon", "120.75", "--interval", "300",
                 "--threshold", "gas.level1_pct=20")
    shown = yaml.safe_load(result.stdout)
    password = shown["password"]
    assert len(password) >= 32
    assert shown == {
        "broker_url": "mqtt://broker.test:1883", "client_id": "gas-1", "username": "gas-1", "password": password,
        "telemetry_topic": "citywatch/gas/gas-1/telemetry", "telemetry_qos": 1,
        "status_topic": "citywatch/gas/gas-1/status",
        "online_message": {"payload": "online", "retain": True, "qos": 1},
        "last_will": {"topic": "citywatch/gas/gas-1/status", "payload": "offline", "retain": True, "qos": 1},
        "interval_s": 300.0,
    }
    stored = password_hash(registry, "gas-1")
    assert verify_password(password, stored)
    assert password.encode() not in registry.path.read_bytes()
    device = registry.require("gas-1")
    assert (device.district, device.grid, device.address, device.lat, device.lon, device.interval_s,
            device.thresholds) == ("Nanhu", "G1", "1 Zhongshan Rd", 30.75, 120.75, 300.0, {"gas.level1_pct": 20.0})

    shown_again = cli(config, "devices", "show", "gas-1").stdout
    assert password not in shown_again and stored not in shown_again and "password: set" in shown_again
    assert json.loads(cli(config, "devices", "show", "gas-1", "--json").stdout)["address"] == "1 Zhongshan Rd"


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "gas", "--lat", "91", "--lon", "0"], "lat 91.0"),
    (["--kind", "gas", "--lat", "30"], "give both"),
    (["--kind", "gas", "--tenants", "2"], "tenants: applies to lock devices only"),
    (["--kind", "noise", "--zone-class", "5"], "zone_class '5'"),
    (["--kind", "gas", "--threshold", "gas.level9_pct=3"], "unknown"),
    (["--kind", "gas", "--threshold", "noise.day_db=60"], "does not apply to a gas device"),
    (["--kind", "gas", "--threshold", "gas.level1_pct=nan"], "must be finite"),
    (["--kind", "gas", "--threshold", "gas.level1_pct"], "expected key=value"),
    (["--kind", "gas", "--interval", "0"], "interval_s"),
])
def test_add_rejects_bad_attributes_and_writes_nothing(config: Path, registry: Registry, args: list[str],
                                                       message: str) -> None:
    result = cli(config, "devices", "add", "dev-1", *args, code=1)
    assert message in result.output
    assert registry.all() == []


def test_add_refuses_a_duplicate_and_an_id_the_broker_cannot_use(config: Path) -> None:
    cli(config, "devices", "add", "gas-1", "--kind", "gas")
    assert "already exists" in cli(config, "devices", "add", "gas-1", "--kind", "water", code=1).output
    assert "':'" in cli(config, "devices", "add", "gas:2", "--kind", "gas", code=1).output


def test_list_filters_by_kind_district_grid_status_and_prints_json(config: Path) -> None:
    for device_id, kind, district, grid in [("g1", "gas", "Nanhu", "G1"), ("g2", "gas", "Xiuzhou", "G2"),
                                            ("w1", "water", "Nanhu", "G1"), ("w2", "water", "Nanhu", "G2")]:
        cli(config, "devices", "add", device_id, "--kind", kind, "--district", district, "--grid", grid)
    cli(config, "devices", "disable", "w2")

    def ids(*filters: str) -> list[str]:
        return [d["id"] for d in json.loads(cli(config, "devices", "list", "--json", *filters).stdout)]

    assert ids() == ["g1", "g2", "w1", "w2"]
    assert ids("--kind", "gas") == ["g1", "g2"]
    assert ids("--district", "Nanhu") == ["g1", "w1", "w2"]
    assert ids("--district", "Nanhu", "--grid", "G2") == ["w2"]
    assert ids("--status", "disabled") == ["w2"]
    assert ids("--status", "enabled", "--kind", "water") == ["w1"]
    assert "password" not in cli(config, "devices", "list", "--json").stdout
    table = cli(config, "devices", "list", "--grid", "G1").stdout.splitlines()
    assert [line.split("\t")[0] for line in table] == ["g1", "w1"]


def test_update_changes_validates_merges_thresholds_and_unsets(config: Path, registry: Registry) -> None:
    cli(config, "devices", "add", "n1", "--kind", "noise", "--zone-class", "1", "--lat", "30", "--lon", "120",
        "--threshold", "noise.day_db=58")
    cli(config, "devices", "update", "n1", "--district", "Nanhu", "--threshold", "noise.night_db=45")
    d = registry.require("n1")
    assert d.district == "Nanhu" and d.thresholds == {"noise.day_db": 58.0, "noise.night_db": 45.0}
    cli(config, "devices", "update", "n1", "--threshold", "noise.day_db=", "--unset", "location",
        "--unset", "zone_class")
    d = registry.require("n1")
    assert d.thresholds == {"noise.night_db": 45.0} and d.lat is None and d.lon is None and d.zone_class is None
    assert "lat 100.0" in cli(config, "devices", "update", "n1", "--lat", "100", "--lon", "1", code=1).output
    assert "does not apply" in cli(config, "devices", "update", "n1", "--threshold", "water.severe_cm=9",
                                   code=1).output
    assert registry.require("n1") == d  # refused updates changed nothing
    assert "no device" in cli(config, "devices", "update", "nope", "--grid", "G", code=1).output


def test_disable_enable_rotate_remove(config: Path, registry: Registry) -> None:
    first = yaml.safe_load(cli(config, "devices", "add", "l1", "--kind", "lock", "--tenants", "3").stdout)
    cli(config, "devices", "disable", "l1")
    assert registry.require("l1").enabled is False
    cli(config, "devices", "enable", "l1")
    assert registry.require("l1").enabled is True
    second = yaml.safe_load(cli(config, "devices", "rotate", "l1").stdout)
    assert second["password"] != first["password"]
    assert verify_password(second["password"], password_hash(registry, "l1"))
    assert not verify_password(first["password"], password_hash(registry, "l1"))
    cli(config, "devices", "remove", "l1", code=1, stdin="n\n")  # asks first
    assert registry.get("l1") is not None
    cli(config, "devices", "remove", "l1", "--yes")
    assert registry.get("l1") is None
    for command in ("disable", "enable", "rotate", "show"):
        assert "no device l1" in cli(config, "devices", command, "l1", code=1).output
    assert "no device" in cli(config, "devices", "remove", "l1", "--yes", code=1).output


def test_registry_update_refuses_id_kind_and_status(registry: Registry) -> None:
    registry.add(Device(id="g1", kind="gas"))
    for change in ({"kind": "water"}, {"id": "g2"}, {"enabled": False}):
        with pytest.raises(DeviceError, match="cannot update"):
            registry.update("g1", change)
    assert registry.require("g1") == registry.all()[0] and registry.require("g1").kind == "gas"


def test_threshold_values_must_be_numbers() -> None:
    with pytest.raises(DeviceError, match="finite number"):
        validate_device(Device(id="g", kind="gas", thresholds={"gas.level1_pct": "high"}))  # type: ignore[dict-item]
    with pytest.raises(DeviceError, match="finite number"):
        validate_device(Device(id="g", kind="gas", thresholds={"battery.low_pct": float("inf")}))
    validate_device(Device(id="g", kind="gas", thresholds={"battery.low_pct": 10, "gas.level2_pct": 40.5}))


# -- CSV import ------------------------------------------------------------------------------------------

GOOD_CSV = """id,kind,district,grid,address,lat,lon,interval_s,zone_class,tenants,max_stay_min,no_parking,thresholds
gas-1,gas,Nanhu,G1,"Room 101, Bldg 2",30.75,120.75,300,,,,,gas.level1_pct=20;gas.level2_pct=40
noise-1,noise,Nanhu,G1,1 Main St,,,,4a,,,,noise.night_db=50
park-1,parking,Xiuzhou,G2,Bay 3,,,,,,90,no,

lock-1,lock,Xiuzhou,G2,,,,,,4,,,
"""


def test_import_applies_every_row_and_writes_the_passwords_to_a_private_file(
        config: Path, registry: Registry, tmp_path: Path) -> None:
    csv_file, secrets = tmp_path / "street.csv", tmp_path / "secrets.csv"
    csv_file.write_text(GOOD_CSV)
    result = cli(config, "devices", "import", str(csv_file), "--secrets-out", str(secrets))
    assert "imported 4 devices" in result.output and "password" not in result.stdout
    assert [d.id for d in registry.all()] == ["gas-1", "lock-1", "noise-1", "park-1"]
    gas = registry.require("gas-1")
    assert gas.address == "Room 101, Bldg 2" and gas.thresholds == {"gas.level1_pct": 20.0, "gas.level2_pct": 40.0}
    assert registry.require("park-1").max_stay_min == 90 and registry.require("lock-1").tenants == 4
    assert registry.require("noise-1").zone_class == "4a"
    assert secrets.stat().st_mode & 0o777 == 0o600
    rows = [line.split(",") for line in secrets.read_text().splitlines()]
    assert rows[0][:4] == ["id", "kind", "username", "password"]
    for row in rows[1:]:
        assert verify_password(row[3], password_hash(registry, row[0]))
        assert row[4] == "mqtt://broker.test:1883" and row[5] == f"citywatch/{row[1]}/{row[0]}/telemetry"
    # the secrets file is never overwritten (it may hold passwords nobody has copied yet)
    csv_file.write_text("id,kind\ngas-9,gas\n")
    assert "exists" in cli(config, "devices", "import", str(csv_file), "--secrets-out", str(secrets),
                           code=1).output
    assert registry.get("gas-9") is None


def test_import_lists_every_problem_with_its_line_and_writes_nothing(
        config: Path, registry: Registry, tmp_path: Path) -> None:
    registry.add(Device(id="old-1", kind="gas"))
    csv_file, secrets = tmp_path / "bad.csv", tmp_path / "secrets.csv"
    csv_file.write_text(
        "id,kind,lat,lon,tenants,thresholds\n"
        "ok-1,gas,30,120,,\n"            # 2: fine
        "ok-1,water,,,,\n"               # 3: duplicate in the file
        "old-1,gas,,,,\n"                # 4: already registered
        "x-1,radar,,,,\n"                # 5: unknown kind
        "x-2,gas,95,120,,\n"             # 6: bad latitude
        ",gas,,,,\n"                     # 7: missing id
        "x-3,water,30,abc,,\n"           # 8: lon not a number
        "x-4,gas,,,2,\n"                 # 9: tenants on a gas device
        "x-5,gas,,,,gas.level1_pct=1e999\n"  # 10: not finite
        "ok-2,lock,,,3,\n"               # 11: fine
    )
    result = cli(config, "devices", "import", str(csv_file), "--secrets-out", str(secrets), code=1)
    lines = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in lines] == [f"line {n}" for n in range(3, 11)], lines
    for n, words in [(3, "duplicate id ok-1 (first on line 2)"), (4, "already registered"), (5, "radar"),
                     (6, "lat 95.0"), (7, "id: missing"), (8, "lon 'abc'"), (9, "tenants"), (10, "finite")]:
        assert words in lines[n - 3], lines[n - 3]
    assert [d.id for d in registry.all()] == ["old-1"]
    assert not secrets.exists()


def test_import_header_problems_and_dry_run(config: Path, registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(CsvImportError) as err:
        parse_csv("id,type\nx,gas\n", set(), ZONES)
    assert err.value.errors == ["line 1: missing column 'kind'",
                                "line 1: unknown column 'type' (known: " + err.value.errors[1].split("(known: ")[1]]
    csv_file = tmp_path / "street.csv"
    csv_file.write_text(GOOD_CSV)
    assert "4 devices OK" in cli(config, "devices", "import", str(csv_file), "--dry-run").output
    assert registry.all() == []
    assert "--secrets-out" in cli(config, "devices", "import", str(csv_file), code=2).output
    printed = cli(config, "devices", "import", str(csv_file), "--secrets-out", "-").stdout.splitlines()
    assert printed[0] == "id,password" and len(printed) == 5


def test_import_is_one_transaction_even_when_the_registry_changes_underneath(
        registry: Registry, tmp_path: Path) -> None:
    """A row that collides at insert time (added by someone else after the check) rolls back every row."""
    other = Registry(registry.path)
    secrets = tmp_path / "secrets.csv"

    class Racing(Registry):
        def all(self) -> list[Device]:
            found = super().all()
            other.add(Device(id="lock-1", kind="lock"))  # lands between the check and the insert
            return found

    racing = Racing(registry.path)
    try:
        with pytest.raises(DeviceError, match="lock-1 already exists"):
            import_csv(racing, GOOD_CSV, ZONES, secrets, "mqtt://b:1883", "citywatch")
    finally:
        racing.close()
        other.close()
    assert [d.id for d in registry.all()] == ["lock-1"]
    assert not secrets.exists()


# -- a running pipeline sees registry changes (issue item 6) ----------------------------------------------


def test_running_pipeline_picks_up_added_and_disabled_devices(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = make_settings(tmp_path / "data", mqtt={"url": mosquitto.url, "client_id": f"cw-{tmp_path.name}"})
    device = Device(id="gas-7", kind="gas", district="Nanhu", grid="G7")
    topic = "citywatch/gas/gas-7/telemetry"
    now = time.time() - 10
    run = RunnerThread(settings).start()
    try:
        counters = run.runner.pipeline.counters  # type: ignore[union-attr]
        publish_all(mosquitto, [(topic, payload(now, seq=1, lel_pct=1.0))])
        wait_until(lambda: counters["dead_letter.unknown_device"] == 1)

        registry = Registry(registry_path(settings.data_dir))  # another connection, as the CLI has
        registry.add(device)
        added_at = time.monotonic()
        publish_all(mosquitto, [(topic, payload(now + 1, seq=2, lel_pct=1.0))])
        wait_until(lambda: counters["processed"] == 1, timeout=5)
        assert time.monotonic() - added_at < 5
        assert counters["dead_letter.unknown_device"] == 1  # the message after the add was not lost

        registry.set_enabled(device.id, False)
        registry.close()
        wait_until(lambda: run.call(lambda: not run.runner.devices.get(device.id).enabled), timeout=5)
        publish_all(mosquitto, [(topic, payload(now + 2, seq=3, lel_pct=1.0))])
        wait_until(lambda: counters["dead_letter.device_disabled"] == 1, timeout=5)
        assert counters["processed"] == 1
    finally:
        run.stop()


def test_cache_reloads_on_a_miss_only_when_the_registry_changed(registry: Registry) -> None:
    cache = RegistryCache(registry)
    other = Registry(registry.path)
    try:
        assert cache.get("g1") is None
        other.add(Device(id="g1", kind="gas"))
        assert cache.get("g1") is not None  # no refresh() call needed
        other.update("g1", {"district": "Nanhu"})
        assert cache.get("g1").district == ""  # hits wait for the runner's periodic refresh()
        assert cache.refresh() and cache.get("g1").district == "Nanhu"
        assert not cache.refresh()
    finally:
        other.close()


# -- telemetry and alerts carry the device's place (issue item 7) ---------------------------------------


def test_readings_and_alerts_are_enriched_from_the_registry(registry: Registry) -> None:
    registry.add(Device(id="g1", kind="gas", district="Nanhu", grid="G1", address="1 Main St", lat=30.75,
                        lon=120.75))
    settings = make_settings(registry.path.parent)
    pipeline = Pipeline(settings, RegistryCache(registry), AlertEngine(settings.alerts), started_at=T0)
    out = Output()
    pipeline.process("citywatch/gas/g1/telemetry", payload(T0, lel_pct=30.0), T0, out)
    reading, device = out.accepted[0]
    line = reading_line(reading, device)
    assert line is not None and line.startswith("gas,device=g1,district=Nanhu,grid=G1,kind=gas ")
    place = {"id": "g1", "kind": "gas", "district": "Nanhu", "grid": "G1", "community": "", "city": "",
             "address": "1 Main St", "lat": 30.75, "lon": 120.75}
    [opened] = out.transitions
    assert opened.alert.device == place
    body: dict[str, Any] = json.loads(render_payload(opened, "http://cw.test"))
    assert body["device"] == place
