"""InfluxDB output against a real influxd 1.6.7 behind a v2-write bridge: line protocol, delivery,
outage, restart, rejection and backpressure. influxd missing is a failure, not a skip."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from citywatch.config import AlertSettings, InfluxSettings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import KINDS, Device, Finding, Output, Reading
from citywatch.sinks.influx import InfluxBackpressure, InfluxSink, lines_for
from citywatch.sinks.linebuffer import LineBuffer
from tests.conftest import wait_until
from tests.helpers import T0
from tests.servers.influx import InfluxStack

OUTAGE_S = 30.0  # the acceptance test: InfluxDB down for 30 s mid-stream
TOKEN = "test-token"
FIELD_OF = {"gas": "lel_pct", "noise": "laeq_db", "water": "depth_cm", "parking": "occupied", "lock": "event",
            "smoke": "obscuration_pct_per_m"}
VALUES: dict[str, Any] = {
    "gas": {"lel_pct": 3.5, "co_ppm": 2.0}, "noise": {"laeq_db": 55.0, "lamax_db": 71.5},
    "water": {"depth_cm": 0.0}, "parking": {"occupied": True}, "lock": {"event": "unlock_ok", "user": "u1"},
    "smoke": {"obscuration_pct_per_m": 0.2, "alarm": False, "event": "test"},
}
DEVICES = [Device(id=f"{kind}-{i}", kind=kind, district="Xuhui" if i % 2 else "Huangpu", grid=f"G{i % 3}",
                  zone_class="2" if kind == "noise" else None) for kind in KINDS for i in range(4)]


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxStack]:
    stack = InfluxStack(tmp_path / "influx", token=TOKEN).start()
    yield stack
    stack.stop()


def settings(url: str, **kw: Any) -> InfluxSettings:
    base: dict[str, Any] = {"url": url, "token": SecretStr(TOKEN), "org": "citywatch", "bucket": "citywatch",
                            "batch_size": 500, "flush_interval_ms": 50, "timeout_ms": 2000}
    return InfluxSettings(**{**base, **kw})


def readings(n: int, start: int = 0) -> Output:
    """n readings over every kind; (device, ts) is unique, so every line is its own point."""
    out = Output()
    for i in range(start, start + n):
        device = DEVICES[i % len(DEVICES)]
        ts = T0 + i * 0.001
        out.accepted.append((Reading(device.id, device.kind, ts, ts, dict(VALUES[device.kind]), seq=i,
                                     battery=87.5, rssi=-71.0), device))
    return out


def total(influx: InfluxStack) -> int:
    """Points of readings(): one in its kind's measurement, one in device_status (each has battery)."""
    return sum(influx.count(kind, FIELD_OF[kind]) for kind in KINDS) + influx.count("device_status", "battery")


def test_lines_escape_and_field_types() -> None:
    device = Device(id="n-1", kind="noise", district="Xu hui, North", grid="G=1", zone_class="4a")
    out = Output()
    out.accepted.append((Reading("n-1", "noise", 1700000000.5, 0, {"laeq_db": 61, "lamax_db": 80.25}, seq=7,
                                 battery=50.0), device))
    lock = Device(id="l-1", kind="lock")
    values = {"event": "unlock_fail", "user": 'a "b"\\c'}
    out.accepted.append((Reading("l-1", "lock", 1700000001.0, 0, values), lock))
    out.statuses.append((lock, "offline", 1700000002.0))
    assert lines_for(out) == [
        r"noise,device=n-1,district=Xu\ hui\,\ North,grid=G\=1,kind=noise,zone=4a "
        "laeq_db=61.0,lamax_db=80.25,battery=50.0,seq=7i 1700000000500000000",
        r"device_status,device=n-1,district=Xu\ hui\,\ North,grid=G\=1,kind=noise battery=50.0 1700000000500000000",
        r'lock,device=l-1,kind=lock event="unlock_fail",user="a \"b\"\\c" 1700000001000000000',
        "device_status,device=l-1,kind=lock online=false 1700000002000000000",
    ]


def test_alert_lines() -> None:
    device = Device(id="g-1", kind="gas", district="Minhang", grid="G7")
    engine = AlertEngine(AlertSettings())
    opened = engine.apply(device, Finding("gas_level", True, "critical", 55.5, 50.0), 1700000000.0)
    resolved = engine.apply(device, Finding("gas_level", False, value=2.0), 1700000090.0)
    out = Output()
    out.transitions += [t for t in (opened, resolved) if t is not None]
    first, second, case = lines_for(out)
    assert first.startswith("alerts,device=g-1,district=Minhang,grid=G7,kind=gas,rule=gas_level,"
                            "severity=critical,transition=opened ")
    assert ',status="open",value=55.5,threshold=50.0,count=1i,open=1i,age_s=0.0 1700000000000000000' in first
    assert "transition=resolved " in second and "open=0i,age_s=90.0 1700000090000000000" in second
    assert case.startswith("cases,device=g-1,district=Minhang,grid=G7,kind=gas,outcome=resolved_condition_cleared,"
                           "rule=gas_level ") and case.endswith(" 1700000090000000000")  # the finished case


def test_disk_buffer_keeps_order_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    buf = LineBuffer(tmp_path / "buf", 10_000, segment_lines=3)
    buf.append(5, b"a\nb\n", 2)
    buf.append(6, b"c\n", 1)  # joins the open segment 5
    buf.append(7, b"d\n", 1)  # segment 5 is full: a new one
    buf.append(3, b"z\n", 1)  # a batch that failed in flight: older than what is on disk, so first
    with open(tmp_path / "buf" / f"{7:020d}.lp", "ab") as f:
        f.write(b"half a li")  # a crash mid-append
    reopened = LineBuffer(tmp_path / "buf", 10_000, segment_lines=3)
    assert (reopened.lines, reopened.segments, reopened.next_seq) == (5, 3, 8)
    sent = []
    while (seg := reopened.oldest()) is not None:
        sent.append(reopened.read(seg))
        reopened.remove(seg)
    assert sent == [b"z\n", b"a\nb\nc\n", b"d\n"] and reopened.bytes == 0
    assert not list((tmp_path / "buf").iterdir())


def test_tags_and_types_read_back_equal(influx: InfluxStack, tmp_path: Path) -> None:
    odd = Device(id="w-1", kind="water", district="Pu dong, East=1", grid="A,B C", zone_class="")
    out = Output()
    out.accepted.append((Reading("w-1", "water", T0, T0, {"depth_cm": 12.5}, seq=3, rssi=-80.0), odd))
    lock = Device(id="l-9", kind="lock", district="Jing'an")
    out.accepted.append((Reading("l-9", "lock", T0, T0, {"event": "tamper", "user": 'x "q" \\ y'}), lock))
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        sink.add(lines_for(out))
        assert sink.drain(10)
    [row] = influx.query('SELECT * FROM "water"')
    assert (row["district"], row["grid"], row["device"], row["depth_cm"], row["seq"], row["rssi"]) == (
        "Pu dong, East=1", "A,B C", "w-1", 12.5, 3, -80.0)
    assert row["time"] == int(T0 * 1e9) and "zone" not in row
    [row] = influx.query('SELECT * FROM "lock"')
    assert (row["district"], row["user"], row["event"]) == ("Jing'an", 'x "q" \\ y', "tamper")
    types = {(r["fieldKey"], r["fieldType"]) for r in influx.query('SHOW FIELD KEYS FROM "water"')}
    assert types == {("depth_cm", "float"), ("seq", "integer"), ("rssi", "float")}


def test_sink_delivers_every_kind_and_transitions(influx: InfluxStack, tmp_path: Path) -> None:
    out = readings(1000 * len(KINDS))
    engine = AlertEngine(AlertSettings())
    for i, device in enumerate(DEVICES[:8]):
        opened = engine.apply(device, Finding("gas_level", True, "warning", 30.0, 25.0), T0 + i)
        resolved = engine.apply(device, Finding("gas_level", False, value=1.0), T0 + i + 60)
        out.transitions += [t for t in (opened, resolved) if t is not None]
    out.statuses += [(d, "online", T0 + 1) for d in DEVICES]
    lines = lines_for(out)
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        for i in range(0, len(lines), 700):
            sink.add(lines[i:i + 700])
        assert sink.drain(20)
        stats = sink.stats()
    assert stats["written_lines"] == len(lines) and stats["failed_attempts"] == 0
    assert stats["buffered_on_disk"] == 0 and stats["in_memory"] == 0
    assert {k: influx.count(k, FIELD_OF[k]) for k in KINDS} == {k: 1000 for k in KINDS}
    assert influx.count("alerts", "alert_id") == 16
    assert influx.count("alerts", "alert_id", "\"transition\" = 'resolved' AND \"open\" = 0") == 8
    assert influx.count("device_status", "online") == len(DEVICES)
    by_district = influx.query('SELECT count("lel_pct") FROM "gas" GROUP BY "district"')
    assert {r["district"]: r["count"] for r in by_district} == {"Xuhui": 500, "Huangpu": 500}
    noise = influx.query('SHOW TAG VALUES FROM "noise" WITH KEY = "zone"')
    assert [r["value"] for r in noise] == ["2"]


class Feeder:
    """Adds `per_tick` readings every `tick_s` from a thread until stopped; counts what it sent."""

    def __init__(self, sink: InfluxSink, per_tick: int = 25, tick_s: float = 0.02) -> None:
        self.sink, self.per_tick, self.tick_s = sink, per_tick, tick_s
        self.sent = 0
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="feeder")

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.tick_s):  # pacing, not synchronisation
                lines = lines_for(readings(self.per_tick, self.sent))
                self.sink.add(lines)
                self.sent += len(lines)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(30)
        if self.error:
            raise self.error


def test_outage_mid_stream_loses_and_doubles_nothing(influx: InfluxStack, tmp_path: Path) -> None:
    cfg = settings(influx.url, batch_size=200)
    with InfluxSink(cfg, tmp_path / "data") as sink:
        with Feeder(sink) as feeder:
            wait_until(lambda: sink.stats()["written_lines"] > 500, 10)
            influx.server.stop()
            down_until = time.monotonic() + OUTAGE_S
            wait_until(lambda: sink.stats()["buffered_on_disk"] > 1000, 10)
            while time.monotonic() < down_until:  # the outage: check the sink stays bounded meanwhile
                stats = sink.stats()
                assert stats["in_memory"] <= 4 * cfg.batch_size + feeder.per_tick * 5 and not stats["blocked"]
                time.sleep(0.5)
            influx.server.start()
            wait_until(lambda: sink.stats()["buffered_on_disk"] == 0 and not sink.stats()["failing"], 20)
            sent_before_stop = feeder.sent
        assert sink.drain(20)
        stats = sink.stats()
    assert feeder.sent >= sent_before_stop > 5000
    assert stats["failed_attempts"] > 0 and stats["replayed_batches"] > 0 and stats["rejected_lines"] == 0
    assert total(influx) == feeder.sent == stats["written_lines"]
    assert influx.bridge.accepted_lines == feeder.sent  # each line was accepted once: none doubled
    assert not list((tmp_path / "data" / "influx-buffer").iterdir())


def test_buffer_survives_a_restart_of_the_sink(influx: InfluxStack, tmp_path: Path) -> None:
    influx.bridge.stop()  # connection refused
    lines = lines_for(readings(3000))
    first = InfluxSink(settings(influx.url, batch_size=400), tmp_path / "data")
    first.add(lines)
    wait_until(lambda: first.stats()["failed_attempts"] > 0)
    first.close()
    assert first.stats()["buffered_on_disk"] == len(lines) and first.stats()["lost_on_close"] == 0
    assert list((tmp_path / "data" / "influx-buffer").glob("*.lp"))
    influx.bridge.start()
    with InfluxSink(settings(influx.url, batch_size=400), tmp_path / "data") as second:
        assert second.stats()["buffered_on_disk"] == len(lines)
        assert second.drain(20)
        assert second.stats()["replayed_batches"] > 0
    assert total(influx) == len(lines) == influx.bridge.accepted_lines


def test_bad_data_is_set_aside_and_does_not_block(influx: InfluxStack, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = lines_for(readings(100))
    bad = ['water,device=w-x depth_cm="deep" 1795000000000000000']  # field type conflict: 400
    with InfluxSink(settings(influx.url, flush_interval_ms=10), tmp_path / "data") as sink:
        sink.add(good[:50])
        assert sink.drain(10)
        sink.add(bad)
        assert sink.drain(10)
        sink.add(good[50:])
        assert sink.drain(10)
        stats = sink.stats()
    assert stats["rejected_lines"] == 1 and stats["written_lines"] == len(good) == 200
    assert total(influx) == len(good)
    rejected = tmp_path / "data" / "influx-rejected"
    assert [p.read_text() for p in rejected.glob("*.lp")] == [bad[0] + "\n"]
    assert "HTTP 400" in next(rejected.glob("*.err")).read_text()
    assert "rejected a batch" in caplog.text and TOKEN not in caplog.text


def test_full_disk_buffer_blocks_add_then_recovers(influx: InfluxStack, tmp_path: Path) -> None:
    influx.server.stop()
    cfg = settings(influx.url, batch_size=1000, buffer_max_mb=1)
    lines = lines_for(readings(30000))  # ~5 MB: five times the disk buffer
    with InfluxSink(cfg, tmp_path / "data") as sink:
        added = 0
        with pytest.raises(InfluxBackpressure) as blocked:
            for i in range(0, len(lines), 500):
                sink.add(lines[i:i + 500], timeout=1.0)
                added = i + 500
        stats = sink.stats()
        assert stats["disk_full"] and stats["blocked_adds"] > 0 and blocked.value.retry_after > 0
        assert stats["buffered_bytes"] <= 1024 * 1024 and stats["in_memory"] <= 4 * cfg.batch_size + 500
        influx.server.start()
        sink.add(lines[added:])  # blocks while the backlog drains, then takes the rest
        assert sink.drain(30)
        assert sink.stats()["blocked_s"] > 0
    assert total(influx) == len(lines)


def test_slow_server_timeouts_resend_without_doubles(influx: InfluxStack, tmp_path: Path) -> None:
    influx.bridge.delay_s = 1.0
    lines = lines_for(readings(2000))
    with InfluxSink(settings(influx.url, timeout_ms=300, batch_size=500), tmp_path / "data") as sink:
        sink.add(lines)
        wait_until(lambda: sink.stats()["failed_attempts"] >= 2 and sink.stats()["buffered_on_disk"] > 0)
        influx.bridge.delay_s = 0.0
        assert sink.drain(20)
    # A timed-out write may still have landed; the resend overwrites the same points.
    assert influx.bridge.accepted_lines >= len(lines) == total(influx)


def test_device_coordinates_ride_on_status_health_and_alert_lines() -> None:
    from citywatch.config import AlertSettings
    from citywatch.detectors.lifecycle import AlertEngine
    from citywatch.model import Device, Finding, Output, Reading

    device = Device(id="g-9", kind="gas", district="Nanhu", grid="G9", lat=30.75, lon=120.5)
    out = Output()
    out.accepted.append((Reading("g-9", "gas", 1_700_000_000.0, 1_700_000_000.0, {"lel_pct": 1.0},
                                 battery=80.0), device))
    out.statuses.append((device, "online", 1_700_000_001.0))
    opened = AlertEngine(AlertSettings()).apply(device, Finding("gas_level", True, "warning", 30.0, 25.0),
                                                1_700_000_002.0)
    assert opened is not None
    out.transitions.append(opened)
    lines = lines_for(out)
    status = [line for line in lines if line.startswith("device_status")]
    assert len(status) == 2 and all(",lat=30.75,lon=120.5 " in line for line in status)
    alert = next(line for line in lines if line.startswith("alerts"))
    assert "opened_at=1700000002.0" in alert and "lat=30.75,lon=120.5" in alert
