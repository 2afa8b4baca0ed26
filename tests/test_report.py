"""`citywatch report`: the static situation report, from a simulated day in the alert store, the
device registry and a real InfluxDB (influxd 1.6.7), rendered by headless Chromium.

Chromium is Debian's `chromium` (CI installs it: `apt-get install -y chromium`); missing, the
rendering tests fail with that message rather than skip. The report itself carries no script; the
test adds a few lines to a copy so that Chromium writes each chart's laid-out size and how many of
its shapes have a non-empty box into the DOM it dumps.
"""

from __future__ import annotations

import html as html_lib
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr

from citywatch.cli import Context
from citywatch.config import InfluxSettings, load_settings
from citywatch.dashboards.scenario import CityRun, run_city
from citywatch.report import ReportError, collect, parse_duration, report_command
from citywatch.sinks.influx import InfluxSink
from tests.servers.influx import InfluxStack
from tests.servers.mosquitto import free_port

TOKEN = "test-token"
CORE_CHARTS = ("chart-map", "chart-open-ages", "chart-ack-times", "chart-resolve-times", "chart-timeline",
               "chart-by-district", "chart-by-grid", "chart-by-kind", "chart-grid-level")
SENSOR_CHARTS = ("chart-gas", "chart-noise", "chart-water", "chart-water-rise", "chart-parking", "chart-lock",
                 "chart-smoke", "chart-battery", "chart-rssi")
MEASURE = """<script>
for (const svg of document.querySelectorAll('svg.chart')) {
  const box = svg.getBoundingClientRect();
  let drawn = 0;
  for (const el of svg.querySelectorAll('rect.bar, circle.device, path.alert, path.series')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 || r.height > 0) drawn++;
  }
  svg.setAttribute('data-rendered', Math.round(box.width) + 'x' + Math.round(box.height) + ':' + drawn);
}
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium not found: install Debian's chromium (apt-get install -y chromium); CI does this")
    return found


def chromium_args(profile: Path) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}"]


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxStack, CityRun, Path]]:
    tmp = tmp_path_factory.mktemp("report")
    stack = InfluxStack(tmp / "influx", token=TOKEN).start()
    try:
        run = run_city(tmp / "data")
        settings = InfluxSettings(url=stack.url, token=SecretStr(TOKEN), bucket=stack.db, batch_size=5000,
                                  flush_interval_ms=50)
        with InfluxSink(settings, tmp / "sink") as sink:
            for i in range(0, len(run.lines), 5000):
                sink.add(run.lines[i:i + 5000])
            assert sink.drain(120)
        config = tmp / "config.yaml"  # queries go to influxd's own /query (the bridge only writes)
        config.write_text(yaml.safe_dump({"data_dir": str(tmp / "data"), "influx": {
            "url": stack.server.url, "token": TOKEN, "bucket": stack.db}}))
        yield stack, run, config
    finally:
        stack.stop()


def report(config: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(report_command, ["--since", "24h", "--out", str(out), *args],
                                obj=Context(config, None))
    assert result.exit_code == 0, result.output
    return result.output


def render(html_file: Path, tmp: Path) -> dict[str, tuple[int, int, int]]:
    """Chart id -> (width, height, shapes drawn) as Chromium laid them out."""
    probe = tmp / "probe.html"
    probe.write_text(html_file.read_text().replace("</body>", MEASURE + "</body>"))
    done = subprocess.run([*chromium_args(tmp / "profile"), "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    charts = {}
    for tag in re.findall(r"<svg\b[^>]*>", done.stdout):
        chart_id = re.search(r'\bid="([^"]+)"', tag)
        rendered = re.search(r'data-rendered="(\d+)x(\d+):(\d+)"', tag)
        if chart_id and rendered:
            charts[chart_id.group(1)] = (int(rendered.group(1)), int(rendered.group(2)), int(rendered.group(3)))
    return charts


def screenshot(page: Path, out: Path, profile: Path) -> tuple[int, int, int]:
    """(width, height, bytes) of a PNG screenshot of `page`."""
    done = subprocess.run([*chromium_args(profile), "--window-size=1200,2400", f"--screenshot={out}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


def test_report_renders_every_chart_in_chromium(city: tuple[InfluxStack, CityRun, Path], tmp_path: Path) -> None:
    _, run, config = city
    out = tmp_path / "report.html"
    printed = report(config, out)
    assert f"{len(run.open_alerts)} open alerts" in printed
    html = out.read_text()
    charts = render(out, tmp_path)
    for chart_id in CORE_CHARTS + SENSOR_CHARTS:
        assert chart_id in charts, f"{chart_id} missing from the rendered report"
        width, height, drawn = charts[chart_id]
        assert width >= 300 and height >= 60 and drawn >= 1, f"{chart_id} rendered as {charts[chart_id]}"
    assert charts["chart-map"][2] >= len(run.devices)  # every device a dot or an alert marker
    assert charts["chart-map"][1] >= 300
    assert charts["chart-open-ages"][2] == len(run.open_alerts)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    page = screenshot(out, tmp_path / "report.png", tmp_path / "profile")
    empty = screenshot(blank, tmp_path / "blank.png", tmp_path / "profile")
    assert page[:2] == (1200, 2400) and page[2] > 10 * empty[2], (page, empty)
    assert "<script" not in html.lower()


def test_report_is_self_contained(city: tuple[InfluxStack, CityRun, Path], tmp_path: Path) -> None:
    _, _, config = city
    out = tmp_path / "report.html"
    report(config, out)
    html = out.read_text()
    assert not re.search(r"<(script|link|img|iframe|object)\b", html, re.I)
    assert not re.search(r"\b(src|href)\s*=", html, re.I) and "url(" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) <= {"http://www.w3.org/2000/svg"}


def test_report_figures_come_from_the_store_registry_and_influx(city: tuple[InfluxStack, CityRun, Path]) -> None:
    _, run, config = city
    settings = load_settings(config)
    data = collect(settings, 24 * 3600)
    assert not data.influx_note and all(data.influx[name] for name in data.influx)
    assert {a.id for a in data.open_alerts} == {a.id for a in run.open_alerts}
    assert len(data.devices) == len(run.devices) and len(data.last_seen) == len(run.devices)
    assert len(data.ages("acknowledged")) == run.acknowledged
    opened = sum(run.counters.get(f"transitions.{k}", 0) for k in ("opened", "flapping"))
    assert len(data.openings()) == opened
    review, response = data.overdue()
    forced = run.planted["ignored_forced_open"]
    assert forced in {a.device_id for a in review} and forced in {a.device_id for a in response}
    assert run.planted["late_tamper"] in {a.device_id for a in response} - {a.device_id for a in review}
    offline = {a.device_id for a in data.open_alerts if a.rule == "device_offline"}
    assert offline == {run.planted["silent"], run.planted["last_will"]}


def _cells(table: str) -> list[list[str]]:
    return [[html_lib.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table) if "<td>" in row]


def test_report_shows_the_loops_figures_per_district_and_grid(city: tuple[InfluxStack, CityRun, Path],
                                                             tmp_path: Path) -> None:
    """The section agrees with the InfluxDB `cases` points the same run wrote (another path from the
    engine: the sink's lines, not the store), and Chromium draws its chart."""
    _, run, config = city
    out = tmp_path / "report.html"
    report(config, out, "--no-influx")
    data = collect(load_settings(config), 24 * 3600, use_influx=False)
    page = out.read_text()
    section = page[page.index('<section id="loop-figures">'):]
    section = section[:section.index("</section>")]
    cases = []
    for line in run.lines:
        if line.startswith("cases,"):
            tags, fields, ts = line.rsplit(" ", 2)
            if data.start <= int(ts) / 1e9 <= data.end:
                cases.append((dict(t.split("=", 1) for t in tags.replace("\\ ", " ").split(",")[1:]), fields))
    assert len(cases) >= 20
    closed = [(tags, fields) for tags, fields in cases if tags["outcome"].startswith("closed_")]
    at_grid = sum("closed_at_grid=1i" in fields for _, fields in closed)
    assert 0 < at_grid < len(closed)  # the late dispatch escalated before it closed
    district_table = section[section.index("<h3>By district</h3>"):section.index("<h3>By grid")]
    rows = {row[0]: row for row in _cells(district_table)}
    for district in {tags["district"] for tags, _ in cases}:
        mine = [(tags, fields) for tags, fields in cases if tags["district"] == district]
        finished = len(mine)
        closed_here = [f for t, f in mine if t["outcome"].startswith("closed_")]
        row = rows[district]
        assert int(row[2]) == finished, (district, row)
        grid_ok = sum("closed_at_grid=1i" in f for f in closed_here)
        expected = f"{100 * grid_ok / len(closed_here):.0f}% ({grid_ok}/{len(closed_here)})" if closed_here else "-"
        assert row[3] == expected, (district, row)
        without = sum("dispatched=0i" in f and t["outcome"].startswith("resolved_") for t, f in mine)
        assert int(row[7]) == without
    assert sum(int(row[2]) for row in rows.values()) == len(cases) == data.loop["district"]["total"]["finished"]
    grid_rows = _cells(section[section.index("<h3>By grid"):])
    late = next(d for d in run.devices if d.id == run.planted["late_dispatch"])
    [late_grid] = [row for row in grid_rows if row[2] == late.grid]
    assert late_grid[0] == late.district and late_grid[1] == late.community and late_grid[5].startswith("0%")
    charts = render(out, tmp_path)
    with_closed = {t["district"] for t, _ in closed}
    assert charts["chart-grid-level"][2] == len(with_closed)


def test_report_without_influx_keeps_the_alert_figures(city: tuple[InfluxStack, CityRun, Path],
                                                       tmp_path: Path) -> None:
    _, run, config = city
    out = tmp_path / "report.html"
    printed = report(config, out, "--no-influx")
    assert "sensor charts omitted" in printed
    html = out.read_text()
    for chart_id in CORE_CHARTS:
        assert f'id="{chart_id}"' in html
    for chart_id in SENSOR_CHARTS:
        assert f'id="{chart_id}"' not in html
    assert run.planted["silent"] in html and run.planted["last_will"] in html


def test_report_notes_an_unreachable_influxdb(city: tuple[InfluxStack, CityRun, Path], tmp_path: Path) -> None:
    _, _, config = city
    settings = yaml.safe_load(config.read_text())
    settings["influx"]["url"] = f"http://127.0.0.1:{free_port()}"
    down = tmp_path / "down.yaml"
    down.write_text(yaml.safe_dump(settings))
    out = tmp_path / "report.html"
    printed = report(down, out)
    assert "InfluxDB unavailable" in printed and 'id="chart-map"' in out.read_text()


def test_durations() -> None:
    assert [parse_duration(s) for s in ("90m", "24h", "7d", "1.5h", "30s")] == [5400, 86400, 604800, 5400, 30]
    with pytest.raises(ReportError):
        parse_duration("yesterday")
