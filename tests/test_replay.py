"""`citywatch replay`: the detectors over a CSV, one row at a time, no look-ahead, fast."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from citywatch.detectors.generic import GenericDetector
from citywatch.streams.replay import ReplayError, parse_timestamps, read_chunks, replay, replay_command
from tests.helpers import T0


def write(path: Path, header: str, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        csv.writer(f).writerows(rows)
    return path


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def level_shift(n: int = 3000, at: int = 2000, seed: int = 1) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    return [(iso(T0 + 300 * i), round(50 + rng.gauss(0, 2) + (25 if i >= at else 0), 3)) for i in range(n)]


def test_generic_replay_flags_a_level_shift_once_where_it_starts(tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", "timestamp,value", level_shift())
    stats = replay(src, tmp_path / "out.csv")
    rows = read(tmp_path / "out.csv")
    assert list(rows[0]) == ["timestamp", "is_alert", "anomaly_score"]
    assert len(rows) == stats.rows == 3000
    assert [r["timestamp"] for r in rows] == [r[0] for r in level_shift()]
    alerts = [i for i, r in enumerate(rows) if r["is_alert"] == "1"]
    assert alerts == [2000]  # once, on the first shifted row; then it is adopted
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[2000] >= 0.5 > max(scores[200:2000])


def test_generic_replay_is_quiet_on_noise_and_handles_gaps_and_constants(tmp_path: Path) -> None:
    rng = random.Random(2)
    t, rows = T0, []
    for _ in range(4000):
        t += rng.choice([300.0, 300.0, 310.0, 290.0, 3600.0 * 5 if rng.random() < 0.002 else 300.0])
        rows.append((f"{t:.0f}", round(rng.gauss(10, 1), 3)))
    replay(write(tmp_path / "noise.csv", "timestamp,value", rows), tmp_path / "out.csv")
    assert sum(r["is_alert"] == "1" for r in read(tmp_path / "out.csv")) == 0
    flat = [(f"{T0 + 60 * i:.0f}", 42.0) for i in range(1000)]
    replay(write(tmp_path / "flat.csv", "timestamp,value", flat), tmp_path / "flat_out.csv")
    assert {(r["is_alert"], r["anomaly_score"]) for r in read(tmp_path / "flat_out.csv")} == {("0", "0.000000")}


def test_no_look_ahead_a_prefix_gives_the_same_rows(tmp_path: Path) -> None:
    rows = level_shift(2600)
    replay(write(tmp_path / "all.csv", "timestamp,value", rows), tmp_path / "all_out.csv")
    replay(write(tmp_path / "part.csv", "timestamp,value", rows[:2100]), tmp_path / "part_out.csv")
    assert read(tmp_path / "part_out.csv") == read(tmp_path / "all_out.csv")[:2100]


def test_generic_replay_of_a_long_series_writes_every_row(tmp_path: Path) -> None:
    """Its speed is measured by benchmarks/replay_rate.py, not here (a timed test flakes on a busy box)."""
    rng = random.Random(3)
    rows = [(f"{T0 + 300 * i:.0f}", round(rng.gauss(0, 1) + (i // 5000), 4)) for i in range(60000)]
    src = write(tmp_path / "big.csv", "timestamp,value", rows)
    stats = replay(src, tmp_path / "out.csv")
    out = read(tmp_path / "out.csv")
    assert stats.rows == len(out) == 60000 and [r["timestamp"] for r in out[:3]] == [r[0] for r in rows[:3]]


def test_generic_output_is_what_csv_writer_writes_for_every_cell(tmp_path: Path) -> None:
    """The rows are written without csv.writer when no timestamp cell needs quoting: the file is
    the same either way (cells kept as read, quoted where csv quotes them), and so are the rows read
    past empty, short and long lines."""
    rng = random.Random(7)
    lines, expected_rows = ["timestamp,value"], []
    detector = GenericDetector()
    for i in range(600):
        stamp = iso(T0 + 60 * i).replace(" ", "T")
        cell = f"{stamp},250" if i % 7 == 0 else f" {T0 + 60 * i:.0f} " if i % 5 == 0 else stamp
        value = rng.gauss(0, 1) + (9 if i == 400 else 0)
        if i % 50 == 0:
            lines.append("")  # skipped
        if i % 61 == 0:
            lines.append(f'"{cell}"')  # short: the value is missing (NaN, scores 0)
            value = float("nan")
        else:
            lines.append(f'"{cell}",{value:.4f}' + (",x,y" if i % 13 == 0 else ""))
            value = float(f"{value:.4f}")
        expected_rows.append((cell, *detector.process(value, parse_timestamps([cell])[0])))
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    replay(src, tmp_path / "out.csv")
    expected = tmp_path / "expected.csv"
    with open(expected, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("timestamp", "is_alert", "anomaly_score"))
        writer.writerows((cell, 1 if alert else 0, f"{score:.6f}") for cell, alert, score in expected_rows)
    assert (tmp_path / "out.csv").read_text() == expected.read_text()
    assert '"2026-11-18T11:06:40,250",0,0.000000' in expected.read_text()  # a quoted cell is in it
    plain = tmp_path / "plain.csv"  # and without any cell to quote (the fast path)
    plain.write_text("timestamp,value\n" + "".join(f"{T0 + 60 * i:.0f},{i % 9}\n" for i in range(300)))
    replay(plain, tmp_path / "plain_out.csv")
    detector = GenericDetector()
    assert (tmp_path / "plain_out.csv").read_text() == "timestamp,is_alert,anomaly_score\n" + "".join(
        f"{T0 + 60 * i:.0f},{int(a)},{s:.6f}\n"
        for i in range(300) for a, s in [detector.process(float(i % 9), T0 + 60 * i)])


def test_rows_are_read_as_columns_a_chunk_at_a_time() -> None:
    rows = [["1", "2"], [], [], ["3"], ["4", "5", "6"], [], [], [], ["7", "8"]]
    # three lines at a time: empty ones skipped (a chunk of only empty lines yields nothing), a short
    # row padded, a long one's extra cells dropped
    assert list(read_chunks(iter(rows), 2, rows=3)) == [[["1"], ["2"]], [["3", "4"], ["", "5"]], [["7"], ["8"]]]
    assert list(read_chunks(iter([]), 2)) == []


def test_detector_state_round_trips_mid_stream() -> None:
    rng = random.Random(4)
    values = [(T0 + 300 * i, rng.gauss(0, 1) + (8 if i > 900 else 0)) for i in range(1500)]
    straight = GenericDetector()
    first = [straight.process(v, t) for t, v in values]
    half = GenericDetector()
    for t, v in values[:700]:
        half.process(v, t)
    resumed = GenericDetector.from_state(half.to_state())
    assert [resumed.process(v, t) for t, v in values[700:]] == first[700:]


def test_timestamps_in_several_forms() -> None:
    assert parse_timestamps(["1795000000", "1795000060.5"]) == [1795000000.0, 1795000060.5]
    assert parse_timestamps(["1795000000000"]) == [1795000000.0]  # milliseconds
    assert parse_timestamps(["2026-11-18 11:06:40", "2026-11-18T11:07:40"]) == [T0, T0 + 60]
    assert parse_timestamps(["2026-11-18T19:06:40+08:00"]) == [T0]
    assert parse_timestamps(["2026-11-18T11:06:40Z", "2026-11-18 11:07:40.5Z"]) == [T0, T0 + 60.5]  # Z: UTC
    with pytest.raises(ReplayError, match="row 2: bad timestamp"):
        parse_timestamps(["yesterday"])


def gas_rows(leak_at: int, n: int) -> list[tuple]:
    rng = random.Random(5)
    rows = []
    for i in range(n):
        lel = 1.0 + rng.random() * 0.4 + (min(60.0, 6.0 * (i - leak_at)) if i >= leak_at else 0.0)
        rows.append((f"{T0 + 60 * i:.0f}", round(lel, 1), 90.0))
    return rows


def test_kind_replay_runs_the_real_rules_and_marks_where_alerts_open(tmp_path: Path) -> None:
    rows = gas_rows(leak_at=600, n=700)
    src = write(tmp_path / "gas.csv", "timestamp,lel_pct,battery", rows)
    stats = replay(src, tmp_path / "out.csv", kind="gas")
    out = read(tmp_path / "out.csv")
    assert len(out) == 700 and stats.invalid == 0
    alerts = [i for i, r in enumerate(out) if r["is_alert"] == "1"]
    first_level = next(i for i, r in enumerate(rows) if r[1] >= 25.0)
    assert first_level in alerts  # gas_level opens on the first row at level-1
    assert all(i >= 600 for i in alerts)
    assert all(r["is_alert"] == "0" for r in out[first_level + 1: first_level + 3])  # open, not re-opened


def test_kind_replay_reports_a_sensor_fault_with_a_learned_score(tmp_path: Path) -> None:
    rows = [(f"{T0 + 60 * i:.0f}", 0.5 + (i % 5) / 10) for i in range(120)] + [(f"{T0 + 60 * 120:.0f}", 400.0)]
    src = write(tmp_path / "water.csv", "timestamp,depth_cm", rows)
    replay(src, tmp_path / "out.csv", kind="water")
    out = read(tmp_path / "out.csv")
    assert out[-1]["is_alert"] == "1" and float(out[-1]["anomaly_score"]) > 0.5
    assert set(out[-1]["rules"].split(";")) == {"sensor_jump", "water_depth"}  # the fault beside the alarm
    assert all(r["is_alert"] == "0" and r["rules"] == "" for r in out[:-1])


def test_kind_replay_of_locks_and_bad_rows(tmp_path: Path) -> None:
    rows = [(f"{T0 + 60 * i:.0f}", "door_closed", "") for i in range(10)]
    rows += [(f"{T0 + 600 + 10 * i:.0f}", "unlock_fail", "stranger") for i in range(5)]
    rows += [(f"{T0 + 700:.0f}", "exploded", "")]
    src = write(tmp_path / "lock.csv", "timestamp,event,user", rows)
    stats = replay(src, tmp_path / "out.csv", kind="lock")
    out = read(tmp_path / "out.csv")
    assert [r["is_alert"] for r in out[10:15]] == ["0", "0", "0", "0", "1"]  # brute force at the 5th failure
    assert stats.invalid == 1 and out[-1]["is_alert"] == "0" and out[-1]["anomaly_score"] == "0.000000"


def test_the_click_command(tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", "timestamp,value", level_shift(2500, 2100))
    result = CliRunner().invoke(replay_command, [str(src), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    assert "2500 rows, 1 alerts opened" in result.output and "rows/s" in result.output
    park = write(tmp_path / "park.csv", "timestamp,occupied", [(f"{T0 + 60 * i:.0f}", i < 200) for i in range(300)])
    result = CliRunner().invoke(replay_command, [str(park), "--out", str(tmp_path / "p.csv"), "--kind", "parking",
                                                 "--max-stay-min", "60"])
    assert result.exit_code == 0, result.output
    assert [i for i, r in enumerate(read(tmp_path / "p.csv")) if r["is_alert"] == "1"] == [61]  # overstay
    bad = write(tmp_path / "bad.csv", "when,value", [("1", 2)])
    result = CliRunner().invoke(replay_command, [str(bad), "--out", str(tmp_path / "x.csv")])
    assert result.exit_code != 0 and "timestamp column" in result.output
    wrong = write(tmp_path / "wrong.csv", "timestamp,depth_cm", [("1", 2)])
    result = CliRunner().invoke(replay_command, [str(wrong), "--out", str(tmp_path / "y.csv"), "--kind", "gas"])
    assert result.exit_code != 0 and "unknown columns for kind gas: depth_cm" in result.output
