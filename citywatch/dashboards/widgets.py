"""The building blocks of every dashboard: panel, row and dashboard specs, and configured SDK panel
builders (stat, time series, table) with their thresholds, overrides and column organisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import ThresholdsConfig
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from citywatch.dashboards.queries import Target

Steps = tuple[tuple[float | None, str], ...]  # threshold steps: (from value or None for the base, colour)


@dataclass
class PanelSpec:
    """A configured SDK panel builder (no targets, datasource, id or position yet) and its queries."""

    builder: Any
    targets: list[Target]
    width: int
    height: int


@dataclass
class RowSpec:
    title: str
    panels: list[PanelSpec]


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[RowSpec]
    tags: list[str] = field(default_factory=lambda: ["citywatch"])

    def targets(self) -> list[tuple[str, Target]]:
        """(panel title, target) of every panel."""
        return [(p.builder.build().title, t) for r in self.rows for p in r.panels for t in p.targets]


def threshold_steps(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def thresholds_json(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def override(**props: Any) -> list[dm.DynamicConfigValue]:
    return [dm.DynamicConfigValue(id_val=k.replace("__", "."), value=v) for k, v in props.items()]


def stat_panel(title: str, description: str, unit: str = "none", steps: Steps = ((None, "green"),),
          fields: str | None = None) -> Any:
    reduce = cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    if fields:
        reduce = reduce.fields(fields)
    return (stat.Panel().title(title).description(description).unit(unit).no_value("0")
            .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.NONE)
            .reduce_options(reduce).thresholds(threshold_steps(*steps)))


def timeseries_panel(title: str, description: str, unit: str, steps: Steps | None = None, bars: bool = False) -> Any:
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
                     .placement(cm.LegendPlacement.BOTTOM).calcs([]))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if steps:
        panel = (panel.thresholds(threshold_steps(*steps))
                 .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)))
    if bars:
        panel = (panel.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
                 .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)))
    else:
        panel = panel.fill_opacity(10).show_points(cm.VisibilityMode.NEVER)
    return panel


def table_panel(title: str, description: str, sort_by: str | None = None, desc: bool = True) -> Any:
    panel = table.Panel().title(title).description(description).cell_height(cm.TableCellHeight.SM)
    if sort_by:
        panel = panel.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(desc)])
    return panel


def organize(exclude: tuple[str, ...] = (), order: tuple[str, ...] = (), rename: dict[str, str] | None = None
              ) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {name: True for name in exclude},
        "indexByName": {name: i for i, name in enumerate(order)},
        "renameByName": rename or {},
    })


def ratio(left: str, right: str, alias: str) -> list[dm.DataTransformerConfig]:
    """Join two single-column queries on time and divide them (InfluxQL cannot join)."""
    return [
        dm.DataTransformerConfig(id_val="joinByField", options={"mode": "outer"}),  # on the first time field
        dm.DataTransformerConfig(id_val="calculateField", options={
            "mode": "binary", "alias": alias, "replaceFields": True,
            "binary": {"left": left, "operator": "/", "right": right}}),
    ]
