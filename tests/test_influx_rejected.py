"""One bad line must not cost InfluxDB the good ones (issue 17), against a real influxd 1.6.7.

InfluxDB 2.x refuses a whole batch for one bad line; 1.6 writes the rest and answers 400. The
bridge here gives 2.x's all-or-nothing answer while InfluxDB's own parser still judges every
line: a batch is first written to a scratch database, and only if influxd takes all of it is it
written to the real one."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from pydantic import SecretStr

from citywatch.cli import main
from citywatch.config import InfluxSettings
from citywatch.model import Device, Output, Reading
from citywatch.sinks.influx import InfluxSink
from citywatch.sinks.influxrejected import OUT_OF_RANGE, RejectedDir
from citywatch.sinks.influxwrite import suspects
from citywatch.sinks.lineprotocol import lines_for
from tests.helpers import T0
from tests.servers.influx import InfluxStack, V2Bridge

TOKEN = "test-token"
YEAR_1 = -62135596800.0  # 0001-01-01T00:00:00Z, as a device with a reset clock stamped it


class AllOrNothingBridge(V2Bridge):
    """The v2 bridge with InfluxDB 2.x's answer to a batch holding a bad line: nothing written."""

    bodies: list[bytes]

    async def _write(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()  # aiohttp keeps it: the real write below reads it again
        self.bodies.append(body)
        async with self._session.post(self.upstream.url + "/write", params={"db": "scratch", "precision": "n"},
                                      data=body) as resp:
            if resp.status >= 400:
                self.requests += 1
                return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")
        return await super()._write(request)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxStack]:
    stack = InfluxStack(tmp_path / "influx", token=TOKEN)
    bridge = stack.bridge = AllOrNothingBridge(stack.server, token=TOKEN)
    bridge.bodies = []
    stack.server.start()
    try:
        stack.server.create_database(stack.db)
        stack.server.create_database("scratch")
        bridge.start()
        yield stack
    finally:
        stack.stop()


def settings(url: str, **kw: Any) -> InfluxSettings:
    base: dict[str, Any] = {"url": url, "token": SecretStr(TOKEN), "org": "citywatch", "bucket": "citywatch",
                            "batch_size": 5000, "flush_interval_ms": 20, "timeout_ms": 5000}
    return InfluxSettings(**{**base, **kw})


DEVICES = [Device(id=f"gas-{i:02d}", kind="gas", district="Nanhu", grid=f"G{i % 4}") for i in range(21)]


def good_readings(n: int = 37) -> Output:
    """n readings from 21 devices (the finding's batch), each its own point."""
    out = Output()
    for i in range(n):
        d = DEVICES[i % len(DEVICES)]
        out.accepted.append((Reading(d.id, "gas", T0 + i, T0 + i, {"lel_pct": 3.0 + i / 10}, seq=i), d))
    return out


def v1_write(influx: InfluxStack, line: str) -> None:
    req = urllib.request.Request(f"{influx.server.url}/write?db={influx.db}", data=line.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


def points(influx: InfluxStack) -> int:
    return influx.count("gas", "lel_pct")


def rejected(tmp_path: Path) -> list[tuple[str, str]]:
    """(lines, reasons) of every set-aside file."""
    root = tmp_path / "data" / "influx-rejected"
    return [(p.read_text(), p.with_suffix(".err").read_text()) for p in sorted(root.glob("*.lp"))]


def test_a_bad_timestamp_among_good_lines_costs_only_itself(influx: InfluxStack, tmp_path: Path) -> None:
    """The finding: one reading stamped year 1 sent the whole batch (37 lines, 21 devices) aside and
    nothing was written. Here the line reaches the sink raw (as from a disk buffer of an older version)."""
    good = lines_for(good_readings())
    bad = f"gas,device=gas-99,kind=gas lel_pct=3.5 {round(YEAR_1 * 1e6) * 1000}"
    batch = good[:20] + [bad] + good[20:]
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        sink.add(batch)
        assert sink.drain(20)
        stats = sink.stats()
    assert points(influx) == len(good) == 37 == stats["written_lines"]
    assert stats["rejected_lines"] == 1 and stats["rejected_batches"] == 1
    ((lines, reasons),) = rejected(tmp_path)
    assert lines == bad + "\n"
    assert reasons.startswith("line 1: HTTP 400: ") and "out of range" in reasons
    assert influx.bridge.requests <= 3  # the server's message names the line: no bisection needed


def test_a_line_the_server_refuses_without_naming_it_is_found_by_bisection(influx: InfluxStack,
                                                                          tmp_path: Path) -> None:
    good = lines_for(good_readings(500))
    conflict = f'gas,device=gas-00,district=Nanhu,grid=G0,kind=gas lel_pct="high" {round(T0 * 1e9)}'
    batch = good[:333] + [conflict] + good[333:]  # a field type conflict inside the batch: 400, no line named
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        sink.add(batch)
        assert sink.drain(30)
        stats = sink.stats()
    assert points(influx) == len(good) == stats["written_lines"]
    ((lines, reasons),) = rejected(tmp_path)
    assert lines == conflict + "\n" and "field type conflict" in reasons
    assert influx.bridge.requests <= 2 * 10 + 1  # log2(501) levels, two requests each, and the first


def test_points_outside_influx_time_range_are_never_sent(influx: InfluxStack, tmp_path: Path) -> None:
    out = good_readings(5)
    d = DEVICES[0]
    out.accepted.append((Reading(d.id, "gas", YEAR_1, T0, {"lel_pct": 9.0}, seq=99, battery=50.0), d))
    lines = lines_for(out)
    assert len(lines) == 5 and len(lines.out_of_range) == 2  # its gas point and its device_status point
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        sink.add(lines)
        assert sink.drain(20)
        stats = sink.stats()
    assert stats["out_of_range_lines"] == 2 and stats["written_lines"] == 5 and stats["rejected_lines"] == 0
    bridge = influx.bridge
    assert isinstance(bridge, AllOrNothingBridge) and bridge.bodies
    assert not any(b"-6213559680" in body for body in bridge.bodies)  # never sent
    ((kept, reasons),) = rejected(tmp_path)
    assert kept.count("\n") == 2 and reasons.count(OUT_OF_RANGE) == 2


def test_replay_rejected_sends_again_after_a_fix_and_keeps_what_still_fails(influx: InfluxStack,
                                                                           tmp_path: Path) -> None:
    v1_write(influx, f"water,device=w-1 depth_cm=1.0 {round(T0 * 1e9)}")  # the field is a float (this shard) ...
    good = lines_for(good_readings(10))
    wrong = f'water,device=w-2 depth_cm="deep" {round(T0 * 1e9)}'  # ... so a string is refused
    out_of_range = good_readings(1)
    out_of_range.accepted[0] = (Reading("gas-00", "gas", YEAR_1, T0, {"lel_pct": 1.0}), DEVICES[0])
    with InfluxSink(settings(influx.url), tmp_path / "data") as sink:
        sink.add(good[:5] + [wrong] + good[5:])
        sink.add(lines_for(out_of_range))
        assert sink.drain(20)
    assert len(rejected(tmp_path)) == 2
    cli = CliRunner()
    env = {"CITYWATCH_INFLUX__URL": influx.url, "CITYWATCH_INFLUX__TOKEN": TOKEN}
    args = ["--data-dir", str(tmp_path / "data"), "influx", "replay-rejected"]

    dry = cli.invoke(main, [*args, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "2 file(s), 2 line(s)" in dry.output and len(rejected(tmp_path)) == 2

    still = cli.invoke(main, args, env=env)  # nothing fixed yet: the string still conflicts
    assert still.exit_code == 1 and "field type conflict" in still.output and OUT_OF_RANGE in still.output
    assert len(rejected(tmp_path)) == 2

    influx.query("DROP MEASUREMENT water")  # the schema change that makes the line acceptable
    fixed = cli.invoke(main, args, env=env)
    assert fixed.exit_code == 1, fixed.output  # the out-of-range point can never be written
    assert "written 1 line(s)" in fixed.output and "1 file(s) done" in fixed.output
    ((kept, reasons),) = rejected(tmp_path)
    assert "-6213559680" in kept and OUT_OF_RANGE in reasons
    rows = influx.query('SELECT depth_cm FROM water WHERE device = \'w-2\'')
    assert [r["depth_cm"] for r in rows] == ["deep"]


def test_the_rejected_directory_is_capped_and_drops_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "influx-rejected"
    kept = RejectedDir(root, max_bytes=4096)
    line = (b"gas,device=x lel_pct=1.0 1700000000000000000", "HTTP 400: bad")
    assert kept.keep(1, [line] * 40)
    assert not kept.keep(2, [line] * 40)  # would pass 4 KiB
    assert sum(p.stat().st_size for p in root.iterdir()) <= 4096
    for p in root.iterdir():  # a replay emptied it: room again
        p.unlink()
    assert kept.keep(3, [line] * 40)


def test_server_messages_name_lines_by_number_or_by_text() -> None:
    lines = [b"m v=1 1", b"m v=x 2", b"m v=3 3"]
    v2 = "failed to parse line protocol:\nerrors encountered on line(s):\nline 2: invalid field format"
    assert suspects(v2, lines) == {1: "invalid field format"}
    v1 = "partial write: unable to parse 'm v=x 2': invalid boolean\nunable to parse 'nope': x dropped=0"
    assert suspects(v1, lines) == {1: "invalid boolean"}
    assert suspects("field type conflict: input field \"v\" on measurement \"m\" is type string", lines) == {}
