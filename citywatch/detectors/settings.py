"""Parameters of the learned detectors (`rules.learned` in config.yaml), with their defaults.

Every detector takes its parameters in `__init__`; these models only carry them from the
configuration (`settings.rules.learned`) to `build_rules`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, create_model, field_validator

from citywatch.kinds import specs
from citywatch.section import Section, SectionGroup


class BaselineParams(Section):
    """Per-device seasonal baseline: 24 hour-of-day buckets x (weekday, weekend), interpolated."""

    alpha: float = Field(0.01, gt=0, le=1)  # EW weight once a bucket has 1/alpha readings
    min_count: int = Field(20, ge=2, le=127)  # readings a bucket needs before it may alert
    clip: float = Field(3.0, gt=0)  # Huber clip of an update, in spreads
    flagged_weight: float = Field(0.05, ge=0, le=1)  # learning weight of a point it flags


class FaultParams(Section):
    """Sensor faults on numeric kinds: stuck at one value, or jumping faster than physics allows."""

    stuck_min_run: int = Field(30, ge=3)  # identical readings in a row, at least ...
    stuck_min_duration_s: float = Field(1800.0, ge=0)  # ... over at least this long ...
    stuck_p_tail: float = Field(1e-6, gt=0, lt=1)  # ... and this unlikely for this device
    stuck_warmup: int = Field(60, ge=1)  # readings before the stuck detector may alert
    # At the rest value (0 %LEL in clean air, a dry road) a constant reading is normal.
    # default: each kind's declared rest value (citywatch/kinds/<kind>.py, Measure.rest_value)
    rest_value: dict[str, float] = Field(default_factory=lambda: {
        name: kind.measure.rest_value for name, kind in specs().items()
        if kind.measure is not None and kind.measure.rest_value is not None})


class HealthParams(Section):
    interval_factor: float = Field(4.0, gt=1)  # recent reporting interval this many times off
    interval_alpha: float = Field(0.1, gt=0, le=1)  # weight of the recent-interval average
    interval_warmup: int = Field(200, ge=1)
    drain_span_h: float = Field(6.0, gt=0)  # battery drain measured over this span
    drain_factor: float = Field(4.0, gt=1)  # drain this many times this device's normal ...
    drain_min_pct_day: float = Field(5.0, ge=0)  # ... and at least this fast
    drain_warmup: int = Field(4, ge=1)  # spans learned before it may alert


class GenericParams(Section):
    """The generic detector (as `citywatch replay` runs it) on one numeric field per kind: off
    unless `fields` names a field for the kind."""

    fields: dict[str, str] = {}  # kind: field, e.g. {"gas": "co_ppm"}
    clear_after: int = Field(30, ge=1)  # readings without a new alert before it clears

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        known = specs()
        for kind, field in fields.items():
            if kind not in known:
                raise ValueError(f"unknown kind {kind!r} (known: {', '.join(known)})")
            if field not in known[kind].fields:
                raise ValueError(f"kind {kind} has no field {field!r} (fields: {', '.join(known[kind].fields)})")
        return fields


class LearnedRulesBase(SectionGroup):
    """`rules.learned`: the learned, per-device detectors. LearnedRules adds each kind's parameter
    blocks (KindSpec.learned_settings: gas_slow_rise, noise_night, water_rise, parking, lock)."""

    enabled: bool = True
    baseline: BaselineParams = BaselineParams()
    faults: FaultParams = FaultParams()
    health: HealthParams = HealthParams()
    generic: GenericParams = GenericParams()

    what = "rules.learned block"


LearnedRules: type[LearnedRulesBase] = create_model(  # type: ignore[call-overload]
    "LearnedRules", __base__=LearnedRulesBase, __module__=__name__,
    **{key: (params, params()) for kind in specs().values() for key, params in kind.learned_settings.items()})
if TYPE_CHECKING:
    LearnedType = LearnedRulesBase
else:
    LearnedType = LearnedRules
