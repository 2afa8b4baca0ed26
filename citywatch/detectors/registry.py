"""The set of rules the pipeline runs, built from settings once."""

from __future__ import annotations

from citywatch.config import Settings
from citywatch.detectors.access import LockManyUsers, LockUnusualFailures, LockUnusualHour
from citywatch.detectors.anomaly import GasSlowRise, NoiseUnusualNight, WaterFastRise
from citywatch.detectors.base import Rule
from citywatch.detectors.baseline import LearnedRule, LocalTime, SeasonalBaseline
from citywatch.detectors.faults import SensorJump, SensorStuck
from citywatch.detectors.gas import GasLevel
from citywatch.detectors.generic_rule import GenericAnomaly
from citywatch.detectors.health import BatteryLow
from citywatch.detectors.lock import lock_rules
from citywatch.detectors.noise import NoiseLimit, NoiseNightBurst
from citywatch.detectors.occupancy import ParkingFlapping, ParkingStuck
from citywatch.detectors.parking import ParkingForbidden, ParkingOverstay
from citywatch.detectors.plausibility import Plausibility
from citywatch.detectors.reporting import BatteryDrain, ReportingInterval
from citywatch.detectors.settings import LearnedRules
from citywatch.detectors.smoke import smoke_rules
from citywatch.detectors.water import WaterDepth
from citywatch.model import KINDS

# The field each numeric kind's fault detectors watch, and the smallest spread its baseline assumes
# (about the resolution devices report at: 0.1 %LEL, a fraction of a dB, half a centimetre).
NUMERIC_FIELDS: dict[str, tuple[str, float]] = {
    "gas": ("lel_pct", 0.1), "noise": ("laeq_db", 0.3), "water": ("depth_cm", 0.5),
    "smoke": ("obscuration_pct_per_m", 0.05),
}


# Fault rules run first on each reading, so the pipeline can mark an alarm found on the same
# reading as suspect (fail safe: a suspected fault is information on the alarm, never a veto).
FAULT_RULES = frozenset({"sensor_jump", "sensor_stuck"})


def build_rules(settings: Settings) -> dict[str, list[Rule]]:
    """Rules per kind, in evaluation order: sensor faults, the fixed thresholds, the learned detectors."""
    r = settings.rules
    learned = r.learned
    plausibility = Plausibility(r.plausibility.max_step_per_min, r.plausibility.min_elapsed_s)
    noise = NoiseLimit(r.noise, LocalTime(settings.timezone))
    rules: list[Rule] = [
        SensorJump(kind, field, plausibility, clear_after=r.plausibility.jump_clear_after)
        for kind, (field, _) in NUMERIC_FIELDS.items() if plausibility.limit(kind) is not None
    ]
    rules += [
        GasLevel(r.gas), noise, NoiseNightBurst(r.noise, noise), WaterDepth(r.water),
        ParkingOverstay(r.parking), ParkingForbidden(), *lock_rules(r.lock), *smoke_rules(r.smoke),
        BatteryLow(r.health),
    ]
    if learned.enabled:
        rules += learned_rules(settings, learned, noise)
    rules.sort(key=lambda rule: rule.name not in FAULT_RULES)  # stable: faults first, order kept
    return {kind: [rule for rule in rules if kind in rule.kinds] for kind in KINDS}


def learned_rules(settings: Settings, learned: LearnedRules, noise: NoiseLimit) -> list[LearnedRule]:
    """The learned detectors, each one object shared by all devices of its kinds."""
    clock = LocalTime(settings.timezone)
    b = learned.baseline
    f = learned.faults

    def baseline(field: str, min_spread: float) -> SeasonalBaseline:
        return SeasonalBaseline(field, clock, alpha=b.alpha, min_count=b.min_count, clip=b.clip,
                                flagged_weight=b.flagged_weight, min_spread=min_spread)

    out: list[LearnedRule] = []
    for kind, (field, _) in NUMERIC_FIELDS.items():
        out.append(SensorStuck(kind, field, rest=f.rest_value.get(kind), min_run=f.stuck_min_run,
                               min_duration_s=f.stuck_min_duration_s, p_tail=f.stuck_p_tail,
                               warmup=f.stuck_warmup))
    out += [
        GasSlowRise(baseline("lel_pct", NUMERIC_FIELDS["gas"][1]), learned.gas_slow_rise,
                    settings.rules.gas.level1_pct),
        NoiseUnusualNight(baseline("laeq_db", NUMERIC_FIELDS["noise"][1]), noise, learned.noise_night),
        WaterFastRise(baseline("depth_cm", NUMERIC_FIELDS["water"][1]), learned.water_rise,
                      settings.rules.water.severe_cm),
        ParkingFlapping(learned.parking),
        ParkingStuck(baseline("occupied", 0.05), learned.parking),
        LockManyUsers(learned.lock),
        LockUnusualHour(clock, learned.lock, b.flagged_weight),
        # one count per clock hour: too sparse for 48 buckets, so one bucket (warm after a day)
        LockUnusualFailures(SeasonalBaseline("failures", clock, seasonal=False, alpha=b.alpha, min_count=24,
                                             clip=b.clip, flagged_weight=b.flagged_weight, min_spread=0.1),
                            learned.lock),
        ReportingInterval(learned.health),
        BatteryDrain(learned.health),
    ]
    g = learned.generic  # the generic detector, only on the fields config.yaml names (off by default)
    out += [GenericAnomaly(kind, field, clear_after=g.clear_after) for kind, field in g.fields.items()]
    return out
