"""A CLI that guides (issue 18, item 2): each rough edge reproduced, as a new user or an operator meets it.

Errors are run as real processes (a traceback printed outside click would show there): exit code 1 or
2, one line on stderr saying what to do, no traceback. Progress bars appear on a terminal (a pty) and
never in a pipe. `replay` holds a bounded amount of memory and writes to stdout with `--out -`.
`devices import --update` upserts a corrected sheet. The hint printed after a device change works
exactly as printed against a real Mosquitto.
"""

from __future__ import annotations

import http.server
import json
import os
import pty
import re
import select
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from citywatch.cli import main
from citywatch.devices.credentials import verify_password
from citywatch.devices.registry import Registry, registry_path
from tests.servers.mosquitto import AuthMosquittoServer, MosquittoServer
from tests.test_mosquitto_auth import added, auth_dir, refusal, write_config  # noqa: F401 (auth_dir: a fixture)

ROOT = Path(__file__).resolve().parent.parent
CITYWATCH = [sys.executable, "-m", "citywatch.cli"]


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            stderr: int | None = None) -> subprocess.CompletedProcess[str]:
    """`citywatch ARGS` as a process in tmp_path, English, with a data dir of its own."""
    environ = {**os.environ, "CITYWATCH_LANGUAGE": "en", "PYTHONPATH": str(ROOT), **(env or {})}
    environ.pop("CITYWATCH_CONFIG", None)
    return subprocess.run([*CITYWATCH, "--data-dir", str(tmp_path / "data"), *args], cwd=tmp_path, env=environ,
                          capture_output=stderr is None, stderr=stderr, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The process failed with `code`, printing one line (no traceback) that contains `words`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def not_grafana() -> Iterator[str]:
    """An HTTP server that is not Grafana: 404 under /api, a web page elsewhere."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html><body><h1>Not Found</h1>\n<p>nothing here</p></body></html>"
            self.send_response(404 if self.path.startswith("/api/") else 200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- --version ---------------------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"citywatch \d+\.\d+\.\d+\S* \(Python 3\.\d+\.\d+; hot path: .+\)\n", result.stdout)


# -- every error of the list: one line, what to do, exit 1 or 2 --------------------------------


def test_run_with_its_api_port_taken(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "run", env={"CITYWATCH_API__PORT": str(port), "CITYWATCH_MQTT__URL": mosquitto.url,
                                               "CITYWATCH_MQTT__CLIENT_ID": f"cw-{tmp_path.name}"})
    line = one_line_error(result, 1, f"cannot serve the API on 127.0.0.1:{port}", "set api.port")
    assert "CITYWATCH_API__PORT" in line


def test_simulate_to_an_unreachable_broker_and_to_an_http_url(tmp_path: Path) -> None:
    port = closed_port()
    args = ("simulate", "--devices", "3", "--duration", "60")
    one_line_error(run_cli(tmp_path, *args, "--url", f"mqtt://127.0.0.1:{port}"), 1,
                   f"cannot connect to broker 127.0.0.1:{port}", "is the broker running", "--url")
    one_line_error(run_cli(tmp_path, *args, "--url", "http://127.0.0.1:8080"), 2,
                   "http://127.0.0.1:8080 is not an MQTT broker URL", "mqtt://HOST:1883")


def test_worker_with_no_kafka(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "worker", "--bootstrap", f"127.0.0.1:{closed_port()}")
    one_line_error(result, 1, "cannot reach Kafka at 127.0.0.1:", "--bootstrap")


def test_dashboards_push_to_a_server_that_is_not_grafana(tmp_path: Path, not_grafana: str) -> None:
    result = run_cli(tmp_path, "dashboards", "push", "--url", not_grafana, "--token", "t")
    line = one_line_error(result, 1, f"{not_grafana} does not look like Grafana", "HTTP 404", "Grafana's base URL")
    assert "<html>" not in line
    result = run_cli(tmp_path, "dashboards", "push", "--url", f"http://127.0.0.1:{closed_port()}", "--token", "t")
    one_line_error(result, 1, "cannot reach Grafana", "is it running")


def test_unknown_reason_time_zone_and_gas_levels_out_of_order(tmp_path: Path) -> None:
    line = one_line_error(run_cli(tmp_path, "deadletters", "--reason", "not_a_reason"), 2,
                          "unknown reason 'not_a_reason'", "malformed_json", "unknown_device")
    assert "device_disabled" in line and "too_deep" in line
    assert run_cli(tmp_path, "deadletters", "--reason", "unknown_device").returncode == 0

    one_line_error(run_cli(tmp_path, "devices", "list", env={"CITYWATCH_TIMEZONE": "Mars/Olympus"}), 2,
                   "unknown time zone 'Mars/Olympus'", "Asia/Shanghai")
    (tmp_path / "tz.yaml").write_text("timezone: Europe/Atlantis\n")
    one_line_error(run_cli(tmp_path, "--config", str(tmp_path / "tz.yaml"), "devices", "list"), 2,
                   "unknown time zone 'Europe/Atlantis'")

    one_line_error(run_cli(tmp_path, "devices", "add", "gas-1", "--kind", "gas", "--threshold", "gas.level1_pct=60"),
                   1, "gas.level1_pct (60)", "below gas.level2_pct (50)")
    one_line_error(run_cli(tmp_path, "devices", "list", env={"CITYWATCH_RULES__GAS__LEVEL1_PCT": "70"}), 2,
                   "level1_pct")
    assert run_cli(tmp_path, "devices", "list").stdout == ""  # nothing was registered


def test_mosquitto_auth_reload_without_a_pid_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "devices", "mosquitto-auth", "--out", str(tmp_path / "auth"), "--reload")
    one_line_error(result, 2, "--reload needs Mosquitto's pid", "--pid-file FILE")
    assert not (tmp_path / "auth").exists()  # refused before anything was written


# -- the hint after a device change works exactly as printed ------------------------------------------


def test_the_hint_after_a_device_change_works_as_printed(tmp_path: Path, auth_dir: Path) -> None:  # noqa: F811
    server = AuthMosquittoServer(tmp_path / "mosquitto", auth_dir)
    config = write_config(tmp_path, server.url)
    gas = added(config, "gas-1", "gas")
    CliRunner().invoke(main, ["--config", str(config), "devices", "mosquitto-auth", "--out", str(auth_dir)])
    server.start()
    try:
        assert refusal(server.port, "gas-1", gas["password"]) is None
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{server.pid}\n")
        rotated = CliRunner().invoke(main, ["--config", str(config), "devices", "rotate", "gas-1"])
        assert rotated.exit_code == 0, rotated.output
        new_password = yaml.safe_load(rotated.stdout)["password"]
        hint = next(line for line in rotated.stderr.splitlines() if "mosquitto-auth" in line)
        printed = re.search(r"`(citywatch devices mosquitto-auth [^`]*)`", hint)
        assert printed, hint
        command = shlex.split(printed.group(1).replace("DIR", str(auth_dir)).replace("FILE", str(pid_file)))
        assert command[:3] == ["citywatch", "devices", "mosquitto-auth"]
        result = CliRunner().invoke(main, ["--config", str(config), *command[1:]])
        assert result.exit_code == 0, result.output
        assert "reloaded mosquitto" in result.stderr
        assert refusal(server.port, "gas-1", gas["password"]) is not None  # the old password stopped working
        assert refusal(server.port, "gas-1", new_password) is None
    finally:
        server.stop()


# -- devices show: readable ---------------------------------------------------------------------------


def test_devices_show_is_readable(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "devices", "add", "gas-1", "--kind", "gas", "--district", "Nanhu", "--grid", "G1",
                   "--threshold", "gas.level1_pct=20", "--threshold", "gas.level2_pct=40").returncode == 0
    shown = dict(line.split(": ", 1) for line in run_cli(tmp_path, "devices", "show", "gas-1").stdout.splitlines())
    assert shown["thresholds"] == "gas.level1_pct=20; gas.level2_pct=40"  # was {'gas.level1_pct': 20.0, ...}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(UTC\+08:00\)", shown["created_at"])  # was an epoch
    assert (shown["enabled"], shown["password"], shown["no_parking"], shown["lat"]) == ("enabled", "set", "no", "-")
    assert shown["interval_s"] == "60"
    listed = run_cli(tmp_path, "devices", "list")
    assert listed.stderr.splitlines()[0].split("\t")[:3] == ["id", "kind", "city"]  # the heading, on stderr
    assert listed.stdout.startswith("gas-1\tgas\t")  # stdout stays rows


# -- replay: stdout, bounded memory ---------------------------------------------------------------------


def series(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        for i in range(rows):
            f.write(f"{1790000000 + 300 * i},{50 + (i % 7) * 0.5 + (25 if i >= rows - 50 else 0)}\n")
    return path


def test_replay_out_dash_writes_to_stdout(tmp_path: Path) -> None:
    src = series(tmp_path / "in.csv", 3000)
    result = run_cli(tmp_path, "replay", str(src), "--out", "-")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "-").exists()  # was: a file named "-"
    rows = result.stdout.splitlines()
    assert rows[0] == "timestamp,is_alert,anomaly_score" and len(rows) == 3001
    assert rows[1].startswith("1790000000,0,")
    assert result.stderr.strip().startswith("3000 rows, ") and result.stderr.strip().endswith("-> -")
    gas = tmp_path / "gas.csv"
    gas.write_text("timestamp,lel_pct\n" + "".join(f"{1790000000 + 60 * i},{1 if i < 20 else 30}\n"
                                                     for i in range(25)))
    out = run_cli(tmp_path, "replay", str(gas), "--out", "-", "--kind", "gas").stdout.splitlines()
    assert out[0] == "timestamp,is_alert,anomaly_score,rules" and out[21].split(",")[1::2] == ["1", "gas_level"]


def test_replay_memory_is_bounded_by_a_chunk_not_the_file(tmp_path: Path) -> None:
    """Peak RSS grows by less than 8 MB from 2,000 to 60,000 rows (holding the file grew it by
    about 16 MB here, 272 MB per million rows: measured 324 MB peak for 1M rows, 56 MB now)."""
    small, big = series(tmp_path / "small.csv", 2000), series(tmp_path / "big.csv", 60000)
    probe = ("import resource, sys; from pathlib import Path; from citywatch.streams.replay import replay\n"
             "replay(Path(sys.argv[1]), Path(sys.argv[3])); a = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "replay(Path(sys.argv[2]), Path(sys.argv[3])); b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print((b - a) / 1024)")
    result = subprocess.run([sys.executable, "-c", probe, str(small), str(big), str(tmp_path / "out.csv")],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    grown_mb = float(result.stdout)
    assert grown_mb < 8, f"peak RSS grew {grown_mb:.1f} MB for 58,000 more rows"
    assert (tmp_path / "out.csv").read_text().count("\n") == 60001


# -- devices import --update ------------------------------------------------------------------------------

SHEET = """id,kind,district,grid,address,thresholds
gas-1,gas,Nanhu,G1,1 Zhongshan Rd,gas.level1_pct=20
gas-2,gas,Nanhu,G1,2 Zhongshan Rd,
water-1,water,Nanhu,G2,Bridge 3,
"""
CORRECTED = """id,kind,district,grid,address,thresholds
gas-1,gas,Nanhu,G1,1 Zhongshan Rd,gas.level1_pct=20
gas-2,gas,Nanhu,G7,12 Zhongshan Rd,gas.level1_pct=15
water-1,water,Nanhu,G2,Bridge 3,
water-2,water,Xiuzhou,G3,Bridge 9,
"""


def test_import_update_upserts_a_corrected_sheet(tmp_path: Path) -> None:
    (tmp_path / "sheet.csv").write_text(SHEET)
    (tmp_path / "fixed.csv").write_text(CORRECTED)
    first = run_cli(tmp_path, "devices", "import", "sheet.csv", "--secrets-out", "s1.csv")
    assert first.returncode == 0, first.stderr
    registry = Registry(registry_path(tmp_path / "data"))
    try:
        hashes = dict(registry.conn.execute("SELECT id, password_hash FROM devices"))
        created = {d.id: d.created_at for d in registry.all()}
        registry.set_enabled("gas-2", False)

        plain = run_cli(tmp_path, "devices", "import", "fixed.csv", "--secrets-out", "s2.csv")
        assert plain.returncode == 1 and "gas-1 is already registered (--update changes registered devices)" \
            in plain.stderr  # without --update nothing changes
        dry = run_cli(tmp_path, "devices", "import", "fixed.csv", "--update", "--dry-run")
        assert "(1 to add, 1 to update, 2 unchanged)" in dry.stdout

        result = run_cli(tmp_path, "devices", "import", "fixed.csv", "--update", "--secrets-out", "s2.csv")
        assert result.returncode == 0, result.stderr
        assert "imported 1 device; updated 1, 2 unchanged; passwords in s2.csv" in result.stderr
        gas2 = registry.require("gas-2")
        assert (gas2.grid, gas2.address, gas2.thresholds) == ("G7", "12 Zhongshan Rd", {"gas.level1_pct": 15.0})
        assert not gas2.enabled and gas2.created_at == created["gas-2"]  # status and registration kept
        now = dict(registry.conn.execute("SELECT id, password_hash FROM devices"))
        assert {k: now[k] for k in hashes} == hashes  # registered devices keep their passwords
        with open(tmp_path / "s2.csv") as f:
            issued = {row.split(",")[0]: row.split(",")[3] for row in f.read().splitlines()[1:]}
        assert list(issued) == ["water-2"] and verify_password(issued["water-2"], now["water-2"])
        trail = json.loads(run_cli(tmp_path, "audit", "--target", "device:gas-2", "--json").stdout)
        update = [r for r in trail if r["action"] == "device.update"]
        assert len(update) == 1 and update[0]["after"]["grid"] == "G7" and update[0]["before"]["grid"] == "G1"
        assert "from fixed.csv" in update[0]["reason"]

        # all or none: a kind change or a bad row in the corrected sheet changes nothing
        (tmp_path / "bad.csv").write_text(CORRECTED.replace("Bridge 9,", "Bridge 9,water.light_cm=abc")
                                          .replace("water-1,water,", "water-1,gas,"))
        refused = run_cli(tmp_path, "devices", "import", "bad.csv", "--update", "--secrets-out", "s3.csv")
        assert refused.returncode == 1
        assert "line 4: device water-1 is registered as water, not gas" in refused.stderr
        assert "line 5: threshold water.light_cm 'abc': not a number" in refused.stderr
        assert not (tmp_path / "s3.csv").exists()
        assert dict(registry.conn.execute("SELECT id, password_hash FROM devices")) == now
        assert registry.require("gas-2") == gas2
    finally:
        registry.close()


# -- progress bars: on a terminal, never in a pipe ---------------------------------------------------------


def on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, bytes]:
    """Run with stderr on a pseudo-terminal; everything drawn there."""
    master, slave = pty.openpty()
    environ = {**os.environ, "CITYWATCH_LANGUAGE": "en", "PYTHONPATH": str(ROOT), "TERM": "xterm", "COLUMNS": "120"}
    environ.pop("CITYWATCH_PROGRESS", None)
    proc = subprocess.Popen([*CITYWATCH, "--data-dir", str(tmp_path / "data"), *args], cwd=tmp_path, env=environ,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return proc.wait(30), drawn


def test_progress_bars_on_a_terminal_and_never_in_a_pipe(tmp_path: Path) -> None:
    src = series(tmp_path / "in.csv", 8000)
    code, drawn = on_a_terminal(tmp_path, "replay", str(src), "--out", str(tmp_path / "out.csv"))
    assert code == 0, drawn
    assert b"replaying in.csv" in drawn and b"\x1b[" in drawn  # rich's bar, on stderr
    piped = run_cli(tmp_path, "replay", str(src), "--out", str(tmp_path / "out.csv"))
    assert piped.stderr.count("\n") == 1 and "replaying" not in piped.stderr and "\x1b" not in piped.stderr

    (tmp_path / "sheet.csv").write_text(SHEET)
    code, drawn = on_a_terminal(tmp_path, "devices", "import", "sheet.csv", "--secrets-out", "s.csv")
    assert code == 0, drawn
    assert b"checking sheet.csv" in drawn and b"issuing passwords" in drawn and b"writing the registry" in drawn
    code, drawn = on_a_terminal(tmp_path, "backup", "--out", str(tmp_path / "b.tar.gz"))
    assert code == 0 and b"backing up registry.db and state.db" in drawn
    off = {"CITYWATCH_PROGRESS": "0"}
    assert "backing up" not in run_cli(tmp_path, "backup", "--out", str(tmp_path / "c.tar.gz"), env=off).stderr
