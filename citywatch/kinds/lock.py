"""Smart door locks on rented housing: unlock events, forced open, tamper, jammed, door left open.

`lock_forced_open`, `lock_tamper` and `lock_brute_force` are life-safety (security) rules.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import Field

from citywatch.i18n import N_, NP_
from citywatch.ingest.simkind import Incident, Sim, SimDevice, SimKind, rented_home
from citywatch.kindspec import KindSpec, PayloadField
from citywatch.section import Section

if TYPE_CHECKING:  # the dashboard and report modules load when a dashboard or report is made
    from citywatch.charts import SensorReport
    from citywatch.dashboards.queries import Target
    from citywatch.dashboards.widgets import RowSpec

Event = Literal["unlock_ok", "unlock_fail", "forced_open", "tamper", "door_ajar", "door_closed", "jammed",
                "low_battery"]
EVENTS: tuple[str, ...] = get_args(Event)


class LockRules(Section):
    """`rules.lock`: repeated failed unlocks (brute force)."""

    fail_count: int = Field(5, ge=2)
    fail_window_s: float = Field(300.0, gt=0)


class LockParams(Section):
    """`rules.learned.lock`: more users than tenants, unlocks at unusual hours, unusual failures."""

    users_window_days: float = Field(7.0, gt=0)
    users_sketch: int = Field(32, ge=4, le=256)  # user ids remembered (hashed, with last-seen)
    users_factor: float = Field(2.0, ge=1)  # alert above tenants * factor + slack distinct users
    users_slack: int = Field(2, ge=0)
    hour_p_min: float = Field(0.002, gt=0, lt=1)  # an unlock at an hour this rare for this door
    hour_min_unlocks: float = Field(100.0, ge=1)  # unlocks learned before it may alert
    hour_halflife_days: float = Field(28.0, gt=0)
    fail_p_tail: float = Field(1e-5, gt=0, lt=1)  # failed unlocks this hour this unlikely ...
    fail_min: int = Field(3, ge=1)  # ... and at least this many


# -- its InfluxDB queries (dashboard panels and report figures) ------------------------------

# The events the "Lock events" chart counts, and the notable ones its table lists.
CHARTED_EVENTS = ("unlock_fail", "forced_open", "tamper", "door_ajar", "jammed")
NOTABLE_EVENTS = "/^(unlock_fail|forced_open|tamper|door_ajar|jammed|low_battery)$/"


def lock_events() -> list[Target]:
    from citywatch.dashboards import queries as ql

    refs = "ABCDEFGHIJ"
    targets = [ql.per_interval("lock", "count", "event", event, None, ql.is_("event", event), ref_id=refs[i])
               for i, event in enumerate(CHARTED_EVENTS)]
    return [ql.Target(t.ref_id, t.query, t.columns, t.format, t.columns[-1]) for t in targets]


def lock_notable() -> Target:
    from citywatch.dashboards import queries as ql

    q = (f'SELECT "event", "user", "device", "district", "grid" FROM "lock" '
         f'WHERE {ql.where(ql.TIME_FILTER, ql.WHERE_VARS, ql.matches("event", NOTABLE_EVENTS))} '
         'ORDER BY time DESC LIMIT 500')
    return ql.Target("A", q, ("time", "event", "user", "device", "district", "grid"))


def dashboard_row() -> RowSpec:
    from citywatch.dashboards.widgets import PanelSpec, RowSpec, table_panel, timeseries_panel

    return RowSpec("Lock", [
        PanelSpec(timeseries_panel("Lock events", "Failed unlocks, forced opens, tamper, door ajar, jammed.",
                                   "short", bars=True), lock_events(), 12, 8),
        PanelSpec(table_panel("Notable lock events", "The latest security-relevant lock events (newest first)."),
                  [lock_notable()], 12, 8),
    ])




def report(r: SensorReport) -> list[str]:
    """Its part of `citywatch report`: security-relevant lock events."""
    from citywatch.charts import line_chart, series

    _ = r.tr.gettext
    lock: dict[str, list[tuple[float, float]]] = {}
    for target in lock_events():
        lock.update(series(r.rows["lock"], target.columns[-1], ref=target.ref_id))
    return [r.heading(_("Locks: security-relevant events")),
            line_chart("chart-lock", _("Lock events"), lock, r.start, r.end, r.tz, _("events"), y_min=0, bars=True,
                       tr=r.tr)]


class LockSim(SimKind):
    """Simulated door locks of rented flats: the tenants unlock now and then (more by day), the door
    closes at the next report, a failed unlock now and then. Incidents: forced open, tamper, brute
    force (failed unlocks seconds apart, between the regular reports), door left open, jammed."""

    slots = (4, 11, 18)
    incidents = {
        "lock_forced_open": ("lock_forced_open",), "lock_tamper": ("lock_tamper",),
        "lock_brute_force": ("lock_brute_force",), "lock_door_ajar": ("lock_door_ajar",),
        "lock_jammed": ("lock_jammed",),
    }
    valid_fields = {"event": "door_closed"}
    bad_value = {"event": "exploded"}
    battery_event = {"event": "low_battery"}

    def __init__(self, sim: Sim) -> None:
        super().__init__(sim)
        self.rules = sim.rules.section(LockRules)
        self._rng = sim.rng
        self._hour = sim.local_hour
        n = len(sim.devices)
        self._users: list[list[str]] = [[] for _ in range(n)]  # per device: its tenants' user ids
        self._opened = [False] * n  # the door is open after an unlock

    @staticmethod
    def address(rng: random.Random, number: int, street: str) -> str:
        return rented_home(rng, number, street)

    @staticmethod
    def attributes(rng: random.Random) -> dict[str, Any]:
        return {"tenants": rng.randint(1, 4)}

    def setup(self, i: int, device: SimDevice, rng: random.Random) -> None:
        self._users[i] = [f"u{rng.getrandbits(32):08x}" for _ in range(max(1, device.tenants or 1))]

    def normal(self, i: int, t: float) -> dict[str, Any]:
        if self._opened[i]:
            self._opened[i] = False
            return {"event": "door_closed"}
        rng = self._rng
        h = self._hour(t)
        r = rng.random()
        p_unlock = 0.12 if 6.5 <= h < 23.0 else 0.02
        if r < p_unlock:
            self._opened[i] = True
            return {"event": "unlock_ok", "user": rng.choice(self._users[i])}
        if r < p_unlock + 0.004:
            return {"event": "unlock_fail", "user": rng.choice(self._users[i])}
        return {"event": "door_closed"}

    def end_incident(self, i: int, name: str, t: float) -> None:
        self._opened[i] = False

    def script(self, name: str, i: int, k0: int, k_min: int, k_max: int, rng: random.Random) -> Incident:
        if name == "lock_forced_open":
            inc = Incident(name, i, k0, 2)
            inc.values = [{"event": "forced_open"}, {"event": "door_closed"}]
        elif name == "lock_tamper":
            inc = Incident(name, i, k0, 1)
            inc.values = [{"event": "tamper"}]
        elif name == "lock_door_ajar":
            ajar = rng.randint(3, 8)
            inc = Incident(name, i, k0, ajar + 2)
            inc.values = ([{"event": "unlock_ok", "user": rng.choice(self._users[i])}]
                          + [{"event": "door_ajar"}] * ajar + [{"event": "door_closed"}])
        elif name == "lock_jammed":
            jammed = rng.randint(2, 4)
            inc = Incident(name, i, k0, jammed + 1)
            inc.values = [{"event": "jammed"}] * jammed + [{"event": "unlock_ok", "user": rng.choice(self._users[i])}]
        elif name == "lock_brute_force":
            inc = self._brute_force(i, k0, rng)
        else:
            return super().script(name, i, k0, k_min, k_max, rng)
        return inc

    def _brute_force(self, i: int, k0: int, rng: random.Random) -> Incident:
        """`fail_count + 2` failed unlocks a few seconds apart: regular reports plus extra ones."""
        iv = self.sim.interval(i)
        gap = min(15.0, iv / 4.0)
        attacker = {"event": "unlock_fail", "user": f"x{rng.getrandbits(32):08x}"}
        start = self.sim.step_time(i, k0)
        total = self.rules.fail_count + 2
        fails, grid_steps, j = 0, 0, 0
        extras: list[float] = []
        while fails < total:
            offset = j * gap
            steps = offset / iv
            if abs(steps - round(steps)) < 1e-9:
                grid_steps = int(round(steps)) + 1
            else:
                extras.append(start + offset)
            fails += 1
            j += 1
        inc = Incident("lock_brute_force", i, k0, grid_steps)
        inc.values = [attacker] * grid_steps
        inc.extra = attacker
        for t in extras:
            self.sim.extra_reading(i, t)
        inc.detail = {"failures": total, "within_s": (j - 1) * gap}
        return inc


SPEC = KindSpec(
    name="lock",
    label=NP_("kind", "lock"),
    payload=(
        PayloadField("event", Event, "what the lock reports"),
        PayloadField("user", str, "opaque user id", required=False, max_length=128),
    ),
    device_attributes=("tenants",),
    chart_field="event",
    rules="citywatch.detectors.lock",
    settings=LockRules,
    learned_settings={"lock": LockParams},
    safety_rules=frozenset({"lock_forced_open", "lock_tamper", "lock_brute_force"}),
    hazard_group=(NP_("hazard group", "security"), ("lock_*",)),
    rule_labels=(NP_("rule", "lock_forced_open"), NP_("rule", "lock_tamper"), NP_("rule", "lock_brute_force"),
                 NP_("rule", "lock_door_ajar"), NP_("rule", "lock_jammed"), NP_("rule", "lock_many_users"),
                 NP_("rule", "lock_unusual_hour"), NP_("rule", "lock_unusual_failures")),
    messages={
        "lock_forced_open": N_("door forced open"),
        "lock_tamper": N_("lock tampered with (escutcheon removed)"),
        "lock_jammed": N_("lock jammed"),
        "lock_door_ajar": N_("door left open"),
        "lock_brute_force": N_("{count} failed unlocks within {window} s"),
        "lock_many_users": N_("{count} distinct users within {days} days for {tenants} registered tenants"),
        "lock_unusual_hour": N_("door opened at {hour}:00-{hour}:59, an unusual hour for this door "
                                "({share}% of its unlocks)"),
        "lock_unusual_failures": N_("{count} failed unlocks this hour, far above this door's normal"),
    },
    dashboard_row=dashboard_row,
    report_figures={"lock": lock_events},
    report=report,


    simulator=LockSim,
)
