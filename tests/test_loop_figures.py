"""The loop's figures in InfluxDB and Grafana: the `cases` points the sink writes when a case finishes,
and every panel of the row "The loop's figures" run against a real influxd 1.6.7 holding the scripted
day of tests/loop_script.py, giving the same answers as GET /kpis (citywatch.loop.kpis) on its store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from citywatch.config import InfluxSettings, load_settings
from citywatch.dashboards import loop_figures as lf
from citywatch.dashboards import queries as q
from citywatch.dashboards.panels import all_dashboards
from citywatch.loop import kpis
from citywatch.sinks.influx import InfluxSink
from citywatch.sinks.lineprotocol import case_line
from citywatch.sinks.store import AlertStore, store_path
from tests.loop_script import END, T0, LoopRun, run_loop
from tests.servers.influx import InfluxStack

TOKEN = "test-token"


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxStack, LoopRun, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("loop-influx")
    data_dir = tmp / "data"
    run = run_loop(load_settings(None, {"data_dir": data_dir}), data_dir)
    conn = kpis.open_readonly(store_path(data_dir))
    try:
        expected = {by: kpis.compute(conn, T0, END, [by]) for by in ("district", "kind", "grid")}
    finally:
        conn.close()
    stack = InfluxStack(tmp / "influx", token=TOKEN).start()
    try:
        settings = InfluxSettings(url=stack.url, token=SecretStr(TOKEN), bucket=stack.db, batch_size=5000,
                                  flush_interval_ms=50)
        with InfluxSink(settings, tmp / "sink") as sink:
            sink.add(run.lines)
            assert sink.drain(60)
        yield stack, run, expected
    finally:
        stack.stop()


def query(stack: InfluxStack, target: q.Target, **variables: Any) -> list[dict[str, Any]]:
    text = q.substitute(target.query, time_filter=f"time >= {int(T0 * 1000)}ms and time <= {int(END * 1000)}ms",
                        interval="1h", range_end_s=END, variables=variables)
    return stack.query(text)


def one(stack: InfluxStack, target: q.Target, **variables: Any) -> dict[str, Any]:
    [row] = query(stack, target, **variables)
    return row


def test_one_cases_point_per_finished_case(day: tuple[InfluxStack, LoopRun, dict[str, Any]]) -> None:
    _, run, _ = day
    cases = [line for line in run.lines if line.startswith("cases,")]
    finished = [t for t in run.transitions if t.transition in ("closed", "resolved")]
    assert len(cases) == len(finished) == 6
    assert all(case_line(t) is None for t in run.transitions if t.transition not in ("closed", "resolved"))
    [b] = [line for line in cases if run.ids["B"] in line]
    tags, fields, ts = b.rsplit(" ", 2)
    assert tags == ("cases,city=Jiaxing,community=Jianshe\\ St,device=g2,district=Nanhu,grid=G2,kind=gas,"
                    "outcome=closed_verified,rule=gas_level")
    assert fields.split(",")[1:] == [
        "time_to_close_s=9000.0", "time_to_ack_s=1800.0", "time_to_rectify_s=7200.0", "escalation_level=0i",
        "reopened=1i", "dispatched=1i", "within_review=1i", "within_response=1i", "closed_at_grid=1i",
        "reopened_after_rectification=1i"]
    assert int(ts) == round((T0 + 3.5 * 3600) * 1e9)
    [e] = [line for line in cases if run.ids["E"] in line]  # not applicable flags are left out
    assert "outcome=resolved_condition_cleared" in e and "within_review" not in e and "closed_at_grid" not in e
    assert "dispatched=0i" in e and "time_to_ack_s" not in e


def test_the_panels_give_the_same_figures_as_the_api(day: tuple[InfluxStack, LoopRun, dict[str, Any]]) -> None:
    stack, _, expected = day
    total = expected["district"]["total"]
    for flag, alias in lf.SHARES:
        name = {"closed_at_grid": "closed_at_grid_level", "reopened_after_rectification":
                "reopened_after_rectification"}.get(flag, flag)
        row = one(stack, lf.share(flag, alias))
        assert (row[alias], row[f"{alias}_n"]) == (pytest.approx(total[name]["share"]), total[name]["n"]), flag
    assert one(stack, lf.finished())["finished"] == total["finished"] == 6
    assert one(stack, lf.resolved_without_dispatch())["resolved_without_dispatch"] == 2
    for field_, prefix, figure, condition in (
            ("time_to_ack_s", "ack", "time_to_ack_s", ""),
            ("time_to_rectify_s", "rectify", "time_to_rectify_s", ""),
            ("time_to_close_s", "verified_close", "time_to_verified_close_s", q._is("outcome", "closed_verified"))):
        row = one(stack, lf.times(field_, prefix, condition))
        want = total[figure]
        assert (row[f"{prefix}_median_s"], row[f"{prefix}_p90_s"], row[f"{prefix}_n"]) == (
            want["median"], want["p90"], want["n"]), prefix
    headline = one(stack, lf.share("closed_at_grid", "closed_at_grid_share"))
    assert headline["closed_at_grid_share"] == 0.75


def test_tables_by_district_kind_and_grid_match_the_api(day: tuple[InfluxStack, LoopRun, dict[str, Any]]) -> None:
    stack, _, expected = day
    for by, tags in (("district", ("district",)), ("kind", ("kind",)), ("grid", ("district", "community", "grid"))):
        rows = {tuple(r[t] for t in tags): r for r in query(stack, lf.figures_by(*tags))}
        groups = {tuple(g["key"][t] for t in tags): g for g in expected[by]["groups"] if g["finished"]}
        assert set(rows) == set(groups), by
        for key, row in rows.items():
            group = groups[key]
            assert row["finished"] == group["finished"]
            assert row["closed_at_grid_share"] == pytest.approx(group["closed_at_grid_level"]["share"])
            assert row["within_review_share"] == pytest.approx(group["within_review"]["share"])
            assert row["ack_median_s"] == group["time_to_ack_s"]["median"]
            assert row["rectify_median_s"] == group["time_to_rectify_s"]["median"]


def test_the_dashboard_variables_narrow_the_figures(day: tuple[InfluxStack, LoopRun, dict[str, Any]]) -> None:
    stack, _, expected = day
    xiuzhou = next(g for g in expected["district"]["groups"] if g["key"]["district"] == "Xiuzhou")
    row = one(stack, lf.share("within_response", "within_response_share"), district="Xiuzhou")
    assert (row["within_response_share"], row["within_response_share_n"]) == (0.5, 2) == (
        xiuzhou["within_response"]["share"], xiuzhou["within_response"]["n"])
    gas = one(stack, lf.share("reopened_after_rectification", "reopened_share"), kind="gas")
    assert (gas["reopened_share"], gas["reopened_share_n"]) == (0.5, 2)
    assert query(stack, lf.finished(), grid="G404") == []


def test_over_time_panels(day: tuple[InfluxStack, LoopRun, dict[str, Any]]) -> None:
    stack, _, _ = day
    outcomes: dict[str, int] = {}
    for row in query(stack, lf.outcomes_over_time()):
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + row["cases"]
    assert outcomes == {"closed_verified": 3, "closed_confirmed": 1, "resolved_by_person": 1,
                        "resolved_condition_cleared": 1}
    shares = [row["closed_at_grid_share"] for row in query(stack, lf.grid_level_over_time())]
    assert sorted(shares) == [0.0, 1.0, 1.0, 1.0]  # hours with a closure: A, B, D at grid level, C escalated


def test_the_row_is_on_the_city_dashboard() -> None:
    [city] = [d for d in all_dashboards() if d.uid == "citywatch-city"]
    titles = [title for title, _ in city.targets()]
    assert "Closed at grid level" in titles and "Loop figures by grid" in titles
    assert sum(1 for _, t in city.targets() if '"cases"' in t.query) == 14


def test_store_without_cases_gives_empty_figures(tmp_path: Path) -> None:
    """A store with no finished case: counts 0, shares and times null (never a division by zero)."""
    AlertStore(store_path(tmp_path)).close()
    conn = sqlite3.connect(store_path(tmp_path))
    try:
        total = kpis.compute(conn, T0, END, ["grid"])["total"]
    finally:
        conn.close()
    assert total["finished"] == 0 and total["closed_at_grid_level"] == {"n": 0, "count": 0, "share": None}
