"""Parameters of the learned detectors (`rules.learned` in config.yaml), with their defaults.

Every detector takes its parameters in `__init__`; these models only carry them from the
configuration (`settings.rules.learned`) to `build_rules`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineParams(_Section):
    """Per-device seasonal baseline: 24 hour-of-day buckets x (weekday, weekend), interpolated."""

    alpha: float = Field(0.01, gt=0, le=1)  # EW weight once a bucket has 1/alpha readings
    min_count: int = Field(20, ge=2, le=127)  # readings a bucket needs before it may alert
    clip: float = Field(3.0, gt=0)  # Huber clip of an update, in spreads
    flagged_weight: float = Field(0.05, ge=0, le=1)  # learning weight of a point it flags


class FaultParams(_Section):
    """Sensor faults on numeric kinds: stuck at one value, or jumping faster than physics allows."""

    stuck_min_run: int = Field(30, ge=3)  # identical readings in a row, at least ...
    stuck_min_duration_s: float = Field(1800.0, ge=0)  # ... over at least this long ...
    stuck_p_tail: float = Field(1e-6, gt=0, lt=1)  # ... and this unlikely for this device
    stuck_warmup: int = Field(60, ge=1)  # readings before the stuck detector may alert
    # At the rest value (0 %LEL in clean air, a dry road) a constant reading is normal.
    rest_value: dict[str, float] = {"gas": 0.0, "water": 0.0, "smoke": 0.0}


class GasSlowRiseParams(_Section):
    z_allowance: float = Field(1.0, ge=0)  # CUSUM allowance k, in spreads
    cusum_h: float = Field(20.0, gt=0)  # CUSUM decision level, in spreads
    min_excess_pct: float = Field(2.0, ge=0)  # %LEL above this device's normal for the hour
    min_slope_pct_h: float = Field(1.0, ge=0)  # and still rising at least this fast


class NoiseNightParams(_Section):
    z: float = Field(4.0, gt=0)  # spreads above this street's normal for the hour
    min_excess_db: float = Field(6.0, ge=0)  # and at least this many dB(A) above it
    sustain: int = Field(3, ge=1)  # consecutive readings (sustained, not a single loud second)


class WaterRiseParams(_Section):
    rise_cm_per_10min: float = Field(5.0, gt=0)
    min_span_s: float = Field(240.0, gt=0)  # the rise is measured over at least this span
    window_s: float = Field(600.0, gt=0)
    z: float = Field(6.0, gt=0)  # and is this many spreads beyond the gauge's normal 10-min change
    warmup: int = Field(120, ge=1)  # readings before it may alert


class ParkingParams(_Section):
    stuck_min_h: float = Field(24.0, gt=0)  # no state change for at least this long ...
    stuck_expected_changes: float = Field(12.0, gt=0)  # ... when this many were expected
    flap_changes: int = Field(8, ge=3)  # this many state changes ...
    flap_window_s: float = Field(600.0, gt=0)  # ... within this long is a flapping sensor
    warmup_changes: int = Field(20, ge=1)  # state changes seen before the stuck detector may alert


class LockParams(_Section):
    users_window_days: float = Field(7.0, gt=0)
    users_sketch: int = Field(32, ge=4, le=256)  # user ids remembered (hashed, with last-seen)
    users_factor: float = Field(2.0, ge=1)  # alert above tenants * factor + slack distinct users
    users_slack: int = Field(2, ge=0)
    hour_p_min: float = Field(0.002, gt=0, lt=1)  # an unlock at an hour this rare for this door
    hour_min_unlocks: float = Field(100.0, ge=1)  # unlocks learned before it may alert
    hour_halflife_days: float = Field(28.0, gt=0)
    fail_p_tail: float = Field(1e-5, gt=0, lt=1)  # failed unlocks this hour this unlikely ...
    fail_min: int = Field(3, ge=1)  # ... and at least this many


class HealthParams(_Section):
    interval_factor: float = Field(4.0, gt=1)  # recent reporting interval this many times off
    interval_alpha: float = Field(0.1, gt=0, le=1)  # weight of the recent-interval average
    interval_warmup: int = Field(200, ge=1)
    drain_span_h: float = Field(6.0, gt=0)  # battery drain measured over this span
    drain_factor: float = Field(4.0, gt=1)  # drain this many times this device's normal ...
    drain_min_pct_day: float = Field(5.0, ge=0)  # ... and at least this fast
    drain_warmup: int = Field(4, ge=1)  # spans learned before it may alert


class GenericParams(_Section):
    """The generic detector (as `citywatch replay` runs it) on one numeric field per kind: off
    unless `fields` names a field for the kind."""

    fields: dict[str, str] = {}  # kind: field, e.g. {"gas": "co_ppm"}
    clear_after: int = Field(30, ge=1)  # readings without a new alert before it clears

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        from citywatch.ingest.schemas import KIND_FIELDS  # here: schemas need not load with the settings

        for kind, field in fields.items():
            if kind not in KIND_FIELDS:
                raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KIND_FIELDS)})")
            if field not in KIND_FIELDS[kind]:
                raise ValueError(f"kind {kind} has no field {field!r} (fields: {', '.join(KIND_FIELDS[kind])})")
        return fields


class LearnedRules(_Section):
    """`rules.learned`: the learned, per-device detectors."""

    enabled: bool = True
    baseline: BaselineParams = BaselineParams()
    faults: FaultParams = FaultParams()
    gas_slow_rise: GasSlowRiseParams = GasSlowRiseParams()
    noise_night: NoiseNightParams = NoiseNightParams()
    water_rise: WaterRiseParams = WaterRiseParams()
    parking: ParkingParams = ParkingParams()
    lock: LockParams = LockParams()
    health: HealthParams = HealthParams()
    generic: GenericParams = GenericParams()

