"""The loop's figures on the city operations dashboard: InfluxQL over the `cases` measurement (one
point per finished case, written by `citywatch.sinks.lineprotocol.case_line`) and the panels of the
row "The loop's figures".

Every figure is over the cases finished in the dashboard's time range, with the definitions of
`citywatch.loop.cases` (the same as GET /kpis and the report): the 0/1 flags (within_review,
within_response, closed_at_grid, reopened_after_rectification) are written only where they apply,
so `mean()` of a flag is its share and `count()` the cases it applies to. Percentiles are InfluxDB's
(nearest rank, rounding the rank to the nearest; GET /kpis rounds it up, so p90 may differ by one
case's time on small counts).
"""

from __future__ import annotations

from typing import Any

from citywatch.dashboards import queries as q
from citywatch.dashboards import widgets as w
from citywatch.dashboards.queries import Target

MEASUREMENT = "cases"
SHARES: tuple[tuple[str, str], ...] = (  # (flag field, alias of its share)
    ("closed_at_grid", "closed_at_grid_share"), ("within_review", "within_review_share"),
    ("within_response", "within_response_share"), ("reopened_after_rectification", "reopened_share"))
GOOD_SHARE: w.Steps = ((None, "red"), (0.8, "orange"), (0.9, "green"))  # the city's 90% at grid level
TARGET_SHARE = 0.9


def _where(*conditions: str) -> str:
    return q._where(q.TIME_FILTER, q.WHERE_VARS, *conditions)


# -- queries --------------------------------------------------------------------------------------

def share(flag: str, alias: str) -> Target:
    """The share of the cases a flag applies to that meet it, and how many it applies to."""
    query = f'SELECT mean("{flag}") AS "{alias}", count("{flag}") AS "{alias}_n" FROM "{MEASUREMENT}" WHERE {_where()}'
    return Target("A", query, (alias, f"{alias}_n"))


def finished() -> Target:
    query = f'SELECT count("time_to_close_s") AS "finished" FROM "{MEASUREMENT}" WHERE {_where()}'
    return Target("A", query, ("finished",))


def resolved_without_dispatch() -> Target:
    cond = q._where('"dispatched" = 0', q._matches("outcome", "/^resolved_/"))
    query = (f'SELECT count("time_to_close_s") AS "resolved_without_dispatch" FROM "{MEASUREMENT}" '
             f"WHERE {_where(cond)}")
    return Target("B", query, ("resolved_without_dispatch",))


def times(field_: str, prefix: str, condition: str = "") -> Target:
    """Median and 90th percentile of a case time (s), and how many cases have it."""
    query = (f'SELECT median("{field_}") AS "{prefix}_median_s", percentile("{field_}", 90) AS "{prefix}_p90_s", '
             f'count("{field_}") AS "{prefix}_n" FROM "{MEASUREMENT}" WHERE {_where(condition)}')
    return Target("A", query, (f"{prefix}_median_s", f"{prefix}_p90_s", f"{prefix}_n"))


BY_COLUMNS: tuple[str, ...] = ("finished", *(alias for _, alias in SHARES), "ack_median_s", "rectify_median_s",
                               "close_median_s")


def figures_by(*tags: str) -> Target:
    """Per group: cases finished, each share, and median times (closure: of any finished case)."""
    shares = ", ".join(f'mean("{flag}") AS "{alias}"' for flag, alias in SHARES)
    group = ", ".join(f'"{tag}"' for tag in tags)
    query = (f'SELECT count("time_to_close_s") AS "finished", {shares}, median("time_to_ack_s") AS "ack_median_s", '
             f'median("time_to_rectify_s") AS "rectify_median_s", median("time_to_close_s") AS "close_median_s" '
             f'FROM "{MEASUREMENT}" WHERE {_where()} GROUP BY {group}')
    return Target("A", query, (*tags, *BY_COLUMNS))


def outcomes_over_time() -> Target:
    query = (f'SELECT count("time_to_close_s") AS "cases" FROM "{MEASUREMENT}" WHERE {_where()} '
             f'GROUP BY time({q.INTERVAL}), "outcome" fill(none)')
    return Target("A", query, ("time", "outcome", "cases"), "time_series", "$tag_outcome")


def grid_level_over_time() -> Target:
    query = (f'SELECT mean("closed_at_grid") AS "closed_at_grid_share" FROM "{MEASUREMENT}" WHERE {_where()} '
             f"GROUP BY time({q.INTERVAL}) fill(none)")
    return Target("A", query, ("time", "closed_at_grid_share"), "time_series")


# -- panels ---------------------------------------------------------------------------------------

def _share_stat(title: str, description: str, alias: str, steps: w.Steps = GOOD_SHARE) -> Any:
    return w.stat_panel(title, description, "percentunit", steps, fields=f"/^{alias}$/")


def _by_table(title: str, description: str, *tags: str) -> Any:
    panel = w.table_panel(title, description, "finished")
    for _, alias in SHARES:
        panel = panel.override_by_name(alias, w.override(unit="percentunit", decimals=0))
    for name in ("ack_median_s", "rectify_median_s", "close_median_s"):
        panel = panel.override_by_name(name, w.override(unit="s"))
    return panel.override_by_name("closed_at_grid_share", w.override(
        unit="percentunit", decimals=0, thresholds=w.thresholds_json(*GOOD_SHARE),
        custom__cellOptions={"type": "color-text"})).with_transformation(
        w.organize(exclude=("Time",), order=(*tags, *BY_COLUMNS)))


def loop_row() -> w.RowSpec:
    """The row "The loop's figures" of the city operations dashboard."""
    verified = q._is("outcome", "closed_verified")
    return w.RowSpec("The loop's figures (cases finished in the range)", [
        w.PanelSpec(_share_stat("Closed at grid level", "Closed cases (verified or confirmed) never escalated above "
                                f"the grid: the city's headline figure (target {TARGET_SHARE:.0%}).",
                                "closed_at_grid_share"), [share("closed_at_grid", "closed_at_grid_share")], 6, 5),
        w.PanelSpec(_share_stat("Acknowledged or assigned within review deadline", "Cases whose first acknowledgement "
                                "or assignment met the review deadline (cases finished before it with nobody acting "
                                "are not counted).", "within_review_share"),
                    [share("within_review", "within_review_share")], 6, 5),
        w.PanelSpec(_share_stat("Closed within response deadline", "Cases closed (verified or confirmed) by the "
                                "response deadline, of the dispatched ones and those still unfinished at it.",
                                "within_response_share"), [share("within_response", "within_response_share")], 6, 5),
        w.PanelSpec(_share_stat("Reopened after rectification", "Rectified cases whose condition came back during "
                                "verification (failed rectifications).", "reopened_share",
                                ((None, "green"), (0.1, "orange"), (0.25, "red"))),
                    [share("reopened_after_rectification", "reopened_share")], 6, 5),
        w.PanelSpec(w.stat_panel("Cases finished", "Cases closed or resolved in the range, and those resolved without "
                            "dispatch (the condition cleared, or a person resolved it, before any assignment)."),
                    [finished(), resolved_without_dispatch()], 6, 5),
        w.PanelSpec(w.stat_panel("Time to acknowledge or assign", "Median and 90th percentile, from opening to the "
                                 "first acknowledgement or assignment.", "s", fields="/_(median|p90)_s$/"),
                    [times("time_to_ack_s", "ack")], 6, 5),
        w.PanelSpec(w.stat_panel("Time to rectify", "Median and 90th percentile, from opening to the "
                                 "rectification that held (the last).", "s", fields="/_(median|p90)_s$/"),
                    [times("time_to_rectify_s", "rectify")], 6, 5),
        w.PanelSpec(w.stat_panel("Time to verified closure", "Median and 90th percentile, from opening to closure "
                            "verified by the device's own readings.", "s", fields="/_(median|p90)_s$/"),
                    [times("time_to_close_s", "verified_close", verified)], 6, 5),
        w.PanelSpec(_by_table("Loop figures by district", "Per district: cases finished, shares, median times.",
                              "district"), [figures_by("district")], 12, 9),
        w.PanelSpec(_by_table("Loop figures by kind", "Per kind of device: cases finished, shares, median times.",
                              "kind"), [figures_by("kind")], 12, 9),
        w.PanelSpec(_by_table("Loop figures by grid", "Per grid (with its district and community): cases "
                              "finished, shares, median times; most cases first.",
                              "district", "community", "grid"), [figures_by("district", "community", "grid")], 24, 10),
        w.PanelSpec(w.timeseries_panel("Cases finished by outcome", "closed_verified, closed_confirmed, "
                                       "resolved_by_person, resolved_condition_cleared, per interval.", "short",
                                       bars=True),
                    [outcomes_over_time()], 12, 8),
        w.PanelSpec(w.timeseries_panel("Closed at grid level over time", "Share of the cases closed per interval that "
                                  f"were never escalated above the grid (target {TARGET_SHARE:.0%}).", "percentunit",
                                  GOOD_SHARE).min(0).max(1),
                    [grid_level_over_time()], 12, 8),
    ])

