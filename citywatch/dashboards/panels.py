"""The operators' dashboards, panel by panel, with grafana-foundation-sdk builders.

Three dashboards share the template variables district / grid / kind and link to each other:

* City operations: open-alert figures, the city map (devices by status, open alerts by
  severity), the open alerts with their age against the review / response deadlines, the
  closed loop (time to acknowledge and resolve, share within deadlines, alerts by district, grid
  and kind) and the loop's figures over finished cases (`loop_figures`: closed at grid level,
  deadlines met, reopened, times to acknowledge, rectify and verified closure, per district, grid
  and kind).
* Sensors by kind: gas %LEL against the alarm levels, noise LAeq against each zone's day / night
  limit, water depth and rise rate, parking occupancy and overstays, lock events.
* Device health: reporting / offline / low-battery figures, battery and RSSI, last seen.

Every panel's queries are `Target`s from `citywatch.dashboards.queries`, which also name the
columns the panel reads: the tests run each one against a real InfluxDB holding pipeline output.
Thresholds (deadlines, alarm levels, zone limits) are the defaults of `citywatch.config`.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import barchart, geomap
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import geomap as gm

from citywatch.config import AlertSettings
from citywatch.dashboards import queries as q
from citywatch.dashboards.loop_figures import loop_row
from citywatch.dashboards.silences_panel import silences_panel
from citywatch.dashboards.widgets import (
    DashboardSpec,
    PanelSpec,
    RowSpec,
    organize,
    override,
    ratio,
    stat_panel,
    table_panel,
    thresholds_json,
    timeseries_panel,
)
from citywatch.kinds import specs

REVIEW_S = AlertSettings().review_deadline_h * 3600.0
RESPONSE_S = AlertSettings().response_deadline_h * 3600.0
MAP_CENTRE = (30.76, 120.75)  # Jiaxing
SEVERITY_COLOURS = {"info": "blue", "warning": "orange", "critical": "red"}


def _age_cells() -> list[dm.DynamicConfigValue]:
    """Age in hours, coloured against the review and response deadlines."""
    return override(unit="h", decimals=1,
                     thresholds=thresholds_json((None, "green"), (REVIEW_S / 3600, "orange"),
                                                 (RESPONSE_S / 3600, "red")),
                     custom__cellOptions={"type": "color-background"})


def _severity_mappings() -> list[dict[str, Any]]:
    return [{"type": "value", "options": {
        k: {"color": c, "index": i, "text": k} for i, (k, c) in enumerate(SEVERITY_COLOURS.items())}}]


def _severity_cells() -> list[dm.DynamicConfigValue]:
    return override(mappings=_severity_mappings(), custom__cellOptions={"type": "color-text"})


# -- City operations ------------------------------------------------------------------------------

def _map() -> PanelSpec:
    devices = (cb.MapLayerOptions().type("markers").name("Devices by status")
               .location(cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS)
                         .latitude("lat").longitude("lon"))
               .filter_data({"id": "byRefId", "options": "A"}).tooltip(True)
               .config({"showLegend": True, "style": {
                   "color": {"field": "online", "fixed": "green"},
                   "opacity": 0.7, "size": {"fixed": 4},
                   "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"}}}))
    alerts = (cb.MapLayerOptions().type("markers").name("Open alerts by severity")
              .location(cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS)
                        .latitude("lat").longitude("lon"))
              .filter_data({"id": "byRefId", "options": "B"}).tooltip(True)
              .config({"showLegend": True, "style": {
                  "color": {"field": "severity", "fixed": "red"},
                  "opacity": 0.9, "size": {"fixed": 9},
                  "symbol": {"fixed": "img/icons/marker/triangle.svg", "mode": "fixed"},
                  "text": {"field": "rule", "mode": "field"},
                  "textConfig": {"fontSize": 10, "offsetY": -12, "textAlign": "center", "textBaseline": "bottom"}}}))
    panel = (geomap.Panel().title("City map")
             .description("Devices (dots) coloured by status: their last online/offline announcement in the "
                          "range; open alerts (triangles) coloured by severity, labelled with the rule.")
             .view(geomap.MapViewConfig().id("coords").lat(MAP_CENTRE[0]).lon(MAP_CENTRE[1]).zoom(11))  # type: ignore[arg-type]
             .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
             .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
             .layers([devices, alerts])
             .tooltip(geomap.TooltipOptions().mode(gm.TooltipMode.DETAILS))
             .override_by_name("online", override(mappings=[
                 {"type": "value", "options": {"true": {"color": "green", "index": 0, "text": "online"},
                                               "false": {"color": "dark-red", "index": 1, "text": "offline"}}},
                 {"type": "special", "options": {"match": "null", "result": {"color": "text", "index": 2,
                                                                                "text": "no announcement"}}}]))
             .override_by_name("severity", override(mappings=_severity_mappings())))
    return PanelSpec(panel, [q.map_devices(), q.map_alerts()], 14, 16)


def _open_alerts() -> PanelSpec:
    panel = (table_panel("Open alerts: age against deadlines",
                    f"Unresolved alerts with their age (h) against the {REVIEW_S / 3600:g} h review "
                    f"and {RESPONSE_S / 3600:g} h response deadlines; oldest first.", "age_h")
             .override_by_name("age_h", _age_cells())
             .override_by_name("severity", _severity_cells())
             .with_transformation(organize(
                 exclude=("Time", "alert_id"),
                 order=("age_h", "severity", "status", "rule", "kind", "device", "district", "grid", "value",
                        "threshold"))))
    return PanelSpec(panel, [q.open_alerts_table()], 10, 16)


def city_operations() -> DashboardSpec:
    now = RowSpec("Now", [
        PanelSpec(stat_panel("Open alerts", "Unresolved alerts (acknowledged included).",
                        steps=((None, "green"), (1, "orange"))), [q.open_alerts_count()], 4, 4),
        PanelSpec(stat_panel("Critical open", "Unresolved critical alerts.", steps=((None, "green"), (1, "red"))),
                  [q.open_alerts_count(condition=q._is("severity", "critical"), alias="critical")], 4, 4),
        PanelSpec(stat_panel(f"Unacknowledged past {REVIEW_S / 3600:g} h", "Open alerts nobody has acknowledged within "
                        "the review deadline.", steps=((None, "green"), (1, "red"))),
                  [q.overdue_count(REVIEW_S, True, "past_review")], 4, 4),
        PanelSpec(stat_panel(f"Unresolved past {RESPONSE_S / 3600:g} h", "Alerts still unresolved after the response "
                        "deadline.", steps=((None, "green"), (1, "red"))),
                  [q.overdue_count(RESPONSE_S, False, "past_response")], 4, 4),
        PanelSpec(stat_panel("Devices offline", "Open device_offline alerts (silent or last will).",
                        steps=((None, "green"), (1, "orange"))),
                  [q.open_alerts_count(condition=q._is("rule", "device_offline"), alias="offline")], 4, 4),
        PanelSpec(stat_panel("Escalations", "Deadline escalations in the time range.",
                        steps=((None, "green"), (1, "orange"))), [q.escalations()], 4, 4),
        _map(),
        _open_alerts(),
        silences_panel(),
    ])
    ack_share = ratio("ack_within", "ack_total", "acknowledged within deadline")
    res_share = ratio("resolve_within", "resolve_total", "resolved within deadline")
    loop = RowSpec("Closed loop", [
        PanelSpec(stat_panel("Time to acknowledge", "Median and 90th percentile of alert age at acknowledgement.", "s",
                        fields="/_(median|p90)_s$/"), [q.response_times("acknowledged", "acknowledge")], 6, 5),
        PanelSpec(stat_panel("Time to resolve", "Median and 90th percentile of alert age at resolution.", "s",
                        fields="/_(median|p90)_s$/"), [q.response_times("resolved", "resolve")], 6, 5),
        PanelSpec(stat_panel(f"Acknowledged within {REVIEW_S / 3600:g} h", "Share of acknowledgements in the "
                             "range that came within the review deadline.", "percentunit",
                        ((None, "red"), (0.8, "orange"), (0.9, "green")))
                  .transformations(ack_share), q.within_deadline("acknowledged", REVIEW_S, "ack"), 6, 5),
        PanelSpec(stat_panel(f"Resolved within {RESPONSE_S / 3600:g} h", "Share of resolutions in the range that came "
                        "within the response deadline.", "percentunit",
                        ((None, "red"), (0.8, "orange"), (0.9, "green")))
                  .transformations(res_share), q.within_deadline("resolved", RESPONSE_S, "resolve"), 6, 5),
        PanelSpec(barchart.Panel().title("Alerts by district").description("Alerts opened in the range.")
                  .x_field("district").orientation(cm.VizOrientation.HORIZONTAL)
                  .with_transformation(organize(exclude=("Time",))),
                  [q.alerts_by("district")], 8, 9),
        PanelSpec(table_panel("Alerts by grid", "Alerts opened in the range per grid (most first).", "alerts")
                  .with_transformation(organize(exclude=("Time",), order=("district", "grid", "alerts"))),
                  [q.alerts_by("district", "grid")], 8, 9),
        PanelSpec(timeseries_panel("Alerts opened by kind", "Alerts opened per interval.", "short", bars=True),
                  [q.alerts_over_time()], 8, 9),
        PanelSpec(timeseries_panel("Time to acknowledge and resolve", "Mean alert age at acknowledgement and at "
                              "resolution, with the deadlines.", "s",
                              ((None, "green"), (REVIEW_S, "orange"), (RESPONSE_S, "red"))),
                  q.response_times_over_time(), 24, 8),
    ])
    return DashboardSpec("citywatch-city", "citywatch: city operations",
                         "The city on one map: open alerts, deadlines and the closed loop.", [now, loop, loop_row()])


# -- Sensors by kind ------------------------------------------------------------------------------

def sensors() -> DashboardSpec:
    """One row per kind, as each kind declares it (KindSpec.dashboard_row)."""
    rows = [kind.dashboard_row() for kind in specs().values() if kind.dashboard_row is not None]
    return DashboardSpec("citywatch-sensors", "citywatch: sensors by kind",
                         "Gas, noise, water, smoke, parking and locks against their alarm levels and limits.", rows)


# -- Device health --------------------------------------------------------------------------------

def device_health() -> DashboardSpec:
    row = RowSpec("Device health", [
        PanelSpec(stat_panel("Devices reporting", "Devices with a battery/rssi report in the range."),
                  [q.devices_reporting()], 8, 4),
        PanelSpec(stat_panel("Offline now", "Open device_offline alerts.", steps=((None, "green"), (1, "orange"))),
                  [q.open_alerts_count(condition=q._is("rule", "device_offline"), alias="offline")], 8, 4),
        PanelSpec(stat_panel("Low battery now", "Open battery_low alerts.", steps=((None, "green"), (1, "orange"))),
                  [q.open_alerts_count(condition=q._is("rule", "battery_low"), alias="low_battery")], 8, 4),
        PanelSpec(timeseries_panel("Lowest battery by district", "Lowest battery level reported per district.",
                                   "percent", ((None, "red"), (15, "orange"), (20, "green"))),
                  [q.health_by_district("battery")], 12, 8),
        PanelSpec(timeseries_panel("Weakest signal by district", "Lowest RSSI reported per district.", "dBm",
                              ((None, "red"), (-105, "orange"), (-95, "green"))),
                  [q.health_by_district("rssi")], 12, 8),
        PanelSpec(table_panel("Offline devices", "Devices with an open device_offline alert, longest first.",
                              "offline_h")
                  .override_by_name("offline_h", _age_cells())
                  .with_transformation(organize(exclude=("Time", "alert_id"))),
                  [q.offline_devices()], 12, 10),
        PanelSpec(table_panel("Last seen, battery, signal", "Per device: its latest battery report, the signal of that "
                         "report and when it came (last seen); lowest battery first.", "battery", desc=False)
                  .override_by_name("Time", override(unit="dateTimeFromNow", displayName="last seen"))
                  .override_by_name("battery", override(unit="percent", thresholds=thresholds_json(
                      (None, "red"), (15, "orange"), (20, "green")), custom__cellOptions={"type": "color-text"})),
                  [q.device_health_table()], 12, 10),
        PanelSpec(timeseries_panel("Offline announcements", "Devices announcing themselves offline (MQTT last will).",
                              "short", bars=True), [q.offline_announcements()], 24, 6),
    ])
    return DashboardSpec("citywatch-health", "citywatch: device health",
                         "Which devices are silent, offline, low on battery or weak on signal.", [row])


def all_dashboards() -> list[DashboardSpec]:
    return [city_operations(), sensors(), device_health()]
