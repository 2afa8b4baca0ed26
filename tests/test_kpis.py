"""The loop's figures (citywatch.loop.kpis) from a store the real engine filled through a scripted day
(tests/loop_script.py: assign, on site, rectify, verify, reopen, escalate, confirm, resolve), with the
answers worked out by hand from the script's story."""

from __future__ import annotations

import gzip
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citywatch.config import Settings, load_settings
from citywatch.loop import kpis
from citywatch.loop.cases import case_figures
from citywatch.model import Alert
from citywatch.sinks.retention import Retention, archive_dir
from citywatch.sinks.store import AlertStore, store_path
from tests.loop_script import END, T0, H, LoopRun, M, run_loop


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, LoopRun]:
    data_dir = tmp_path_factory.mktemp("loop") / "data"
    settings = load_settings(None, {"data_dir": data_dir})
    return settings, data_dir, run_loop(settings, data_dir)


@pytest.fixture
def conn(loop: tuple[Settings, Path, LoopRun]) -> Iterator[sqlite3.Connection]:
    c = kpis.open_readonly(store_path(loop[1]))
    yield c
    c.close()


def figures(conn: sqlite3.Connection, by: str = "district", start: float = T0, end: float = END,
            data_dir: Path | None = None) -> dict[str, Any]:
    return kpis.compute(conn, start, end, by.split(","), data_dir)


def test_the_script_played_as_written(loop: tuple[Settings, Path, LoopRun]) -> None:
    _, data_dir, run = loop
    store = AlertStore(store_path(data_dir))
    try:
        alerts = {a.id: a for a in store.alerts(None)}
    finally:
        store.close()
    status = {case: alerts[alert_id].status for case, alert_id in run.ids.items()}
    assert status == {"A": "closed", "B": "closed", "C": "closed", "D": "closed", "E": "resolved",
                      "F": "resolved", "G": "open"}
    by_case = {case: alerts[alert_id] for case, alert_id in run.ids.items()}
    assert by_case["B"].reopened == 1 and by_case["C"].escalation_level == 1
    assert by_case["F"].escalation_level == 2 and by_case["D"].closed_by == "inspector"


def test_city_totals(conn: sqlite3.Connection) -> None:
    total = figures(conn)["total"]
    assert (total["opened"], total["open"], total["finished"]) == (7, 1, 6)
    assert total["outcomes"] == {"closed_verified": 3, "closed_confirmed": 1, "resolved_by_person": 1,
                                 "resolved_condition_cleared": 1}
    assert (total["dispatched"], total["resolved_without_dispatch"]) == (4, 2)
    # acknowledged or assigned: A 10 min, B 30 min, D 30 min (acknowledged), C 7 h
    assert total["time_to_ack_s"] == {"n": 4, "median": 30 * M, "p90": 7 * H}
    # rectified (the last time): A 40 min, B 2 h (reopened, rectified again), D 2 h 30, C 8 h
    assert total["time_to_rectify_s"] == {"n": 4, "median": (2 * H + 150 * M) / 2, "p90": 8 * H}
    # verified closures only: A 70 min, B 2 h 30, C 10 h (D was confirmed by a person)
    assert total["time_to_verified_close_s"] == {"n": 3, "median": 150 * M, "p90": 10 * H}
    # review: met by A, B, D; missed by C (assigned after 7 h) and F (nobody, finished after it);
    # E finished before its review deadline with nobody acting: not counted
    assert total["within_review"] == {"n": 5, "count": 3, "share": 0.6}
    # response: A, B, C, D closed within 15 h; F resolved after its response deadline; E not counted
    assert total["within_response"] == {"n": 5, "count": 4, "share": 0.8}
    # the headline: closed without escalation above the grid: A, B, D of A, B, C, D
    assert total["closed_at_grid_level"] == {"n": 4, "count": 3, "share": 0.75}
    assert total["reopened_after_rectification"] == {"n": 4, "count": 1, "share": 0.25}


def test_per_district_grid_community_city_and_kind(conn: sqlite3.Connection) -> None:
    districts = {tuple(g["key"].values()): g for g in figures(conn)["groups"]}
    assert set(districts) == {("Jiaxing", "Nanhu"), ("Jiaxing", "Xiuzhou")}
    nanhu, xiuzhou = districts[("Jiaxing", "Nanhu")], districts[("Jiaxing", "Xiuzhou")]
    assert (nanhu["opened"], nanhu["finished"], nanhu["open"]) == (5, 4, 1)
    assert nanhu["closed_at_grid_level"] == {"n": 3, "count": 2, "share": pytest.approx(2 / 3)}
    assert (xiuzhou["opened"], xiuzhou["finished"]) == (2, 2)
    assert xiuzhou["within_response"] == {"n": 2, "count": 1, "share": 0.5}
    assert xiuzhou["resolved_without_dispatch"] == 1 and xiuzhou["outcomes"]["closed_confirmed"] == 1

    grids = {g["key"]["grid"]: g for g in figures(conn, "grid")["groups"]}
    assert list(figures(conn, "grid")["groups"][0]["key"]) == ["city", "district", "community", "grid"]
    assert {k: g["finished"] for k, g in grids.items()} == {"G1": 2, "G2": 1, "G3": 1, "G9": 2}
    assert grids["G1"]["resolved_without_dispatch"] == 1 and grids["G2"]["open"] == 1
    assert grids["G3"]["closed_at_grid_level"]["share"] == 0.0
    communities = {g["key"]["community"]: g["finished"] for g in figures(conn, "community")["groups"]}
    assert communities == {"Jianshe St": 3, "Xinxing": 1, "Tanghui": 2}
    [city] = figures(conn, "city")["groups"]
    assert city["key"] == {"city": "Jiaxing"} and city["finished"] == 6
    kinds = {g["key"]["kind"]: g for g in figures(conn, "kind")["groups"]}
    assert {k: g["opened"] for k, g in kinds.items()} == {"gas": 4, "water": 2, "lock": 1}
    assert kinds["gas"]["reopened_after_rectification"] == {"n": 2, "count": 1, "share": 0.5}
    both = figures(conn, "district,kind")
    assert [tuple(g["key"].values()) for g in both["groups"]] == [
        ("Jiaxing", "Nanhu", "gas"), ("Jiaxing", "Nanhu", "water"), ("Jiaxing", "Xiuzhou", "lock"),
        ("Jiaxing", "Xiuzhou", "water")]
    assert both["total"] == figures(conn)["total"]


def test_the_period_counts_openings_and_finishes_inside_it(conn: sqlite3.Connection) -> None:
    late = figures(conn, start=T0 + 5 * H)["total"]
    assert late["opened"] == 1  # G; the others opened before the period
    assert late["finished"] == 2  # C (10 h) and F (17 h)
    assert late["outcomes"]["closed_verified"] == 1 and late["outcomes"]["resolved_by_person"] == 1
    assert late["closed_at_grid_level"] == {"n": 1, "count": 0, "share": 0.0}
    early = figures(conn, end=T0 + 2 * H)["total"]
    assert (early["opened"], early["finished"]) == (6, 1)  # A, C, D, B, F and E (at 2 h: the end counts); A
    empty = figures(conn, start=END + H, end=END + 2 * H)["total"]
    assert empty["finished"] == 0 and empty["within_review"] == {"n": 0, "count": 0, "share": None}
    assert empty["time_to_ack_s"] == {"n": 0, "median": None, "p90": None}


def test_archived_alerts_count_for_long_periods(loop: tuple[Settings, Path, LoopRun], tmp_path: Path) -> None:
    """The real retention pass moves the finished alerts into data_dir/archive; with the data dir the
    figures are the same as before, without it the archived cases are gone from them."""
    settings, source, _ = loop
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(store_path(source)) as src, sqlite3.connect(store_path(data_dir)) as dst:
        src.backup(dst)
    before = _compute(data_dir, None)
    retention = load_settings(None, {"data_dir": data_dir, "retention": {"alerts": {"archive_after_days": 1}}})
    report = Retention(retention.retention, data_dir).run_once(END + 86400 + 1)
    assert report.alerts_archived == 6 and not report.errors
    assert sorted(p.name for p in archive_dir(data_dir).iterdir()) == ["alerts-2026-11-18.jsonl.gz",
                                                                      "alerts-2026-11-19.jsonl.gz"]
    assert _compute(data_dir, data_dir) == before
    without = _compute(data_dir, None)
    assert (without["total"]["opened"], without["total"]["finished"]) == (1, 0)
    # a period starting on 11-19 (UTC) reads only that day's file: F (17 h) finished then, C (10 h) did not
    late = _compute(data_dir, data_dir, start=T0 + 13 * H)
    assert late["total"]["finished"] == 1 and late["total"]["outcomes"]["resolved_by_person"] == 1
    assert [p.name for p in kpis.archive_files(data_dir, T0 + 13 * H)] == ["alerts-2026-11-19.jsonl.gz"]


def _compute(data_dir: Path, archive: Path | None, start: float = T0) -> dict[str, Any]:
    conn = kpis.open_readonly(store_path(data_dir))
    try:
        return kpis.compute(conn, start, END, ["district"], archive)
    finally:
        conn.close()


def test_a_crash_mid_archive_does_not_count_an_alert_twice(loop: tuple[Settings, Path, LoopRun],
                                                          tmp_path: Path) -> None:
    settings, source, _ = loop
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(store_path(source)) as src, sqlite3.connect(store_path(data_dir)) as dst:
        src.backup(dst)
    before = _compute(data_dir, data_dir)
    archive_dir(data_dir).mkdir()
    with sqlite3.connect(store_path(data_dir)) as c:  # the archive file written, the rows not yet deleted
        rows = c.execute("SELECT body FROM alerts WHERE status IN ('resolved', 'closed')").fetchall()
    with gzip.open(archive_dir(data_dir) / "alerts-2026-11-18.jsonl.gz", "wb") as f:
        for (body,) in rows:
            f.write(b'{"alert":' + bytes(body) + b',"transitions":[]}\n')
    assert _compute(data_dir, data_dir) == before


def test_bad_groupings_are_refused_with_the_choices(conn: sqlite3.Connection) -> None:
    for by, message in (("street", "unknown 'street'"), ("", "give one of"), ("grid,grid", "twice")):
        with pytest.raises(kpis.KpiError, match=message):
            kpis.compute(conn, T0, END, [by] if by else [])
    with pytest.raises(kpis.KpiError, match="must not end before"):
        kpis.compute(conn, END, T0, ["grid"])


def test_case_definitions_on_edge_cases() -> None:
    base = Alert(id="a", device_id="d", kind="gas", rule="gas_level", severity="warning", status="resolved",
                 opened_at=0.0, updated_at=0.0, review_deadline=6 * H, response_deadline=15 * H)
    quick = case_figures(Alert(**{**_fields(base), "resolved_at": 60.0}))
    assert quick is not None and quick.resolved_without_dispatch and quick.outcome == "resolved_condition_cleared"
    assert (quick.within_review, quick.within_response, quick.closed_at_grid) == (None, None, None)
    # dispatched, then a person resolved it instead of closing: the response deadline counts as missed
    bypassed = case_figures(Alert(**{**_fields(base), "resolved_at": 3 * H, "resolved_by": "ops",
                                     "assigned_at": H, "responded_at": H}))
    assert bypassed is not None and bypassed.outcome == "resolved_by_person" and not bypassed.resolved_without_dispatch
    assert (bypassed.within_review, bypassed.within_response) == (True, False)
    # an alert stored before responded_at existed: the earlier of acknowledgement and assignment
    old = case_figures(Alert(**{**_fields(base), "status": "closed", "closed_at": 5 * H, "acked_at": 2 * H,
                                "assigned_at": 3 * H, "rectified_at": 4 * H, "escalation_level": 1}))
    assert old is not None and old.time_to_ack_s == 2 * H and old.closed_at_grid is False
    assert case_figures(Alert(**{**_fields(base), "status": "open"})) is None


def _fields(alert: Alert) -> dict[str, Any]:
    return {f: getattr(alert, f) for f in alert.__struct_fields__}
