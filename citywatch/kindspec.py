"""What a device kind is: the declaration each kind makes once, in citywatch/kinds/<kind>.py.

Everything the code knows about a kind comes from its KindSpec: the payload fields (the schema is
built from them), the measured quantity its fault detectors, baselines and charts watch (with its
physical rate limit and rest value), its `rules.<kind>` settings and `rules.learned` parameters, the
per-device threshold keys, its rules, which of them are life-safety rules, its hazard group, its
labels and alert texts, and its dashboard row. A new kind is a new file in citywatch/kinds/, plus the
module of its rules in citywatch/detectors/ (hot-path code, compiled with mypyc, which cannot compile
the pydantic settings declared here), its tests and docs; nothing else lists kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from citywatch.section import Section

if TYPE_CHECKING:
    from citywatch.charts import SensorReport
    from citywatch.dashboards.widgets import RowSpec
    from citywatch.ingest.simkind import SimKind


@dataclass(frozen=True)
class PayloadField:
    """One field of the kind's telemetry payload (besides the fields every kind shares: ts, seq,
    battery, rssi). `type` is float, bool, str or a Literal of codes; bounds are checked while decoding.
    A float field's name is also a word in sensor-fault messages: mark it NP_("reading field", name)."""

    name: str
    type: Any
    description: str = ""
    required: bool = True
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Measure:
    """The numeric field the kind's sensor-fault detectors and baselines watch.

    `min_spread` is the smallest spread a baseline assumes (about the resolution devices report at);
    `max_step_per_min` how fast the quantity can really change (faster: a suspected sensor fault;
    None: no such limit, e.g. a fire fills a room with smoke in seconds); `rest_value` the value at
    which a constant reading is normal (clean air, a dry road)."""

    field: str
    min_spread: float
    max_step_per_min: float | None = None
    rest_value: float | None = None


@dataclass(frozen=True)
class Threshold:
    """A per-device override key (`citywatch devices add --threshold key=value`) and the `rules.<kind>`
    setting it overrides; `below`: the key whose value it must stay under on the same device."""

    key: str
    setting: str
    below: str | None = None


@dataclass(frozen=True)
class KindSpec:
    """One device kind, declared once (citywatch/kinds/<name>.py, as `SPEC`).

    - `payload`: the kind's own telemetry fields.
    - `chart_field`, `chart_unit`: the value the console charts for a device of this kind (a float is
      drawn as a line, a yes/no as steps, a code as a list of events).
    - `device_attributes`: registry attributes that mean something for this kind only (Device fields).
    - `measure`: the numeric field fault detectors watch (None: no numeric field, e.g. parking, lock).
    - `settings`: the `rules.<name>` section (thresholds and limits); `learned_settings`: the
      `rules.learned.<key>` parameter blocks of its learned detectors.
    - `thresholds`: per-device override keys.
    - `rules`: the module of its rules (compiled with the hot path), whose `rules(ctx)` makes them;
      the rules every kind has (battery, reporting, the fault detectors on `measure`) are added by
      detectors/registry.py.
    - `safety_rules`: its life-safety rules (opened at the first reading at the level, never held).
    - `hazard_group`: the incident group its alerts join by default (NP_("hazard group", ...)), with
      the rule patterns.
    - `label`: its name marked for translation (NP_("kind", ...)); `rule_labels` likewise for its rules.
    - `messages`: template key -> English template of its rules' alert messages (alert_text.py);
      `words`: message fields whose values are words, with their translation context and words.
    - `dashboard_row`: its row of the "sensors by kind" Grafana dashboard.
    - `report_figures`: figure name -> the InfluxDB queries (dashboards/queries.py Targets) its part
      of `citywatch report` reads; `report`: that part's HTML (headings and charts, citywatch/charts.py).
    - `simulator`: its profile in the simulator (citywatch/ingest/simkind.py; None: not simulated).
    """

    name: str
    label: str
    payload: tuple[PayloadField, ...]
    chart_field: str
    chart_unit: str = ""
    device_attributes: tuple[str, ...] = ()
    measure: Measure | None = None
    settings: type[Section] | None = None
    learned_settings: Mapping[str, type[Section]] = field(default_factory=lambda: MappingProxyType({}))
    thresholds: tuple[Threshold, ...] = ()
    rules: str = ""
    safety_rules: frozenset[str] = frozenset()
    hazard_group: tuple[str, tuple[str, ...]] = ("", ())
    rule_labels: tuple[str, ...] = ()
    messages: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    words: Mapping[str, tuple[str, frozenset[str]]] = field(default_factory=lambda: MappingProxyType({}))
    dashboard_row: Callable[[], RowSpec] | None = None
    report_figures: Mapping[str, Callable[[], Any]] = field(default_factory=lambda: MappingProxyType({}))
    report: Callable[[SensorReport], list[str]] | None = None

    @property
    def chart_type(self) -> Any:
        """The type of `chart_field` (float, bool, str or a Literal of codes)."""
        return next(f.type for f in self.payload if f.name == self.chart_field)
    simulator: type[SimKind] | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The payload's field names, in declared order."""
        return tuple(f.name for f in self.payload)
