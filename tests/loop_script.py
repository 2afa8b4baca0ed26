"""A scripted day of the closed loop through the real alert engine into a real alert store, with known
answers for the loop's figures (tests/test_kpis.py, tests/test_loop_figures.py).

Every step is the engine's own: findings at event times, dispatch actions and the clock's ticks (every
10 minutes and at each step), each step committed to state.db as the runner commits a batch, and the
InfluxDB lines the sink would write collected. Deadlines are the defaults (review 6 h, response 15 h);
verification windows: gas 30 min, water 2 h.

    case  device (city / district / community / grid)      story
    A     g1 gas   Jiaxing / Nanhu / Jianshe St / G1  assigned 10 min, on site, rectified 40 min,
                                                       verified closed at 70 min
    B     g2 gas   Jiaxing / Nanhu / Jianshe St / G2  opened 1 h, assigned 1 h 30, rectified 2 h, the gas
                                                       returns (reopened), rectified 3 h, verified 3 h 30
    C     w1 water Jiaxing / Nanhu / Xinxing / G3     nobody acts: escalated at 6 h (review), assigned
                                                       7 h, rectified 8 h, verified closed at 10 h
    D     l1 lock  Jiaxing / Xiuzhou / Tanghui / G9   forced open at 30 min, acknowledged 1 h, assigned
                                                       2 h, rectified 3 h, closed by an inspector at 4 h
    E     g1 gas   (as A)                              opened 2 h, cleared 2 h 10: resolved, nobody acted
    F     w2 water Jiaxing / Xiuzhou / Tanghui / G9   opened 1 h, nobody acts: escalated 7 h and 16 h,
                                                       resolved by the duty officer at 17 h
    G     g2 gas   (as B)                              opened 18 h, still open at the end (20 h)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.model import Device, Finding, Output, Transition
from citywatch.sinks.lineprotocol import lines_for
from citywatch.sinks.store import AlertStore, store_path

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z
M, H = 60.0, 3600.0
END = T0 + 20 * H

DEVICES = {
    "g1": Device(id="g1", kind="gas", city="Jiaxing", district="Nanhu", community="Jianshe St", grid="G1"),
    "g2": Device(id="g2", kind="gas", city="Jiaxing", district="Nanhu", community="Jianshe St", grid="G2"),
    "w1": Device(id="w1", kind="water", city="Jiaxing", district="Nanhu", community="Xinxing", grid="G3"),
    "l1": Device(id="l1", kind="lock", city="Jiaxing", district="Xiuzhou", community="Tanghui", grid="G9"),
    "w2": Device(id="w2", kind="water", city="Jiaxing", district="Xiuzhou", community="Tanghui", grid="G9"),
}
RULES = {"gas": "gas_level", "water": "water_depth", "lock": "lock_forced_open"}


@dataclass
class LoopRun:
    ids: dict[str, str] = field(default_factory=dict)  # case letter -> alert id
    transitions: list[Transition] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class _Script:
    def __init__(self, settings: Settings, store: AlertStore) -> None:
        self.engine = AlertEngine(settings.alerts)
        self.store = store
        self.run = LoopRun()
        self.now = T0

    def _commit(self, transitions: list[Transition]) -> None:
        out = Output()
        out.transitions.extend(transitions)
        self.run.transitions.extend(transitions)
        self.run.lines.extend(lines_for(out))
        self.store.commit(out, self.engine.take_dirty(), {})

    def until(self, t: float) -> None:
        """Tick at every 10 minutes of the clock (from T0) up to t, and at t."""
        while self.now < t:
            self.now = min(t, T0 + (int((self.now - T0) // (10 * M)) + 1) * 10 * M)
            self._commit(self.engine.tick(self.now))

    def reading(self, at: float, device: str, active: bool, case: str | None = None) -> Transition | None:
        self.until(at)
        d = DEVICES[device]
        rule = RULES[d.kind]
        finding = (Finding(rule, True, "critical" if d.kind == "lock" else "warning", 30.0, 25.0, f"{rule} active",
                           latched=d.kind == "lock") if active else Finding(rule, False, value=0.0))
        t = self.engine.apply(d, finding, at)
        self._commit([t] if t else [])
        if case is not None:
            assert t is not None and t.transition == "opened", (case, t)
            self.run.ids[case] = t.alert_id
        return t

    def act(self, at: float, case: str, action: str, **kwargs: str) -> Transition:
        self.until(at)
        alert_id = self.run.ids[case]
        if action == "acknowledged":
            t = self.engine.acknowledge(alert_id, "ops", at)
        elif action == "resolved":
            t = self.engine.resolve(alert_id, "duty officer", at)
        else:
            by = "inspector" if action == "closed" else "dispatch"
            t = self.engine.dispatch(alert_id, action, by, at, **kwargs)  # type: ignore[arg-type]
        self._commit([t])
        return t


def run_loop(settings: Settings, data_dir: Path) -> LoopRun:
    """Play the script above into data_dir/state.db; returns the ids, transitions and InfluxDB lines."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = AlertStore(store_path(data_dir))
    s = _Script(settings, store)
    try:
        s.reading(T0, "g1", True, "A")
        s.reading(T0, "w1", True, "C")
        s.act(T0 + 10 * M, "A", "assigned", assignee="gas crew 1")
        s.act(T0 + 20 * M, "A", "on_site")
        s.reading(T0 + 30 * M, "l1", True, "D")
        s.act(T0 + 40 * M, "A", "rectified", note="valve replaced")
        s.reading(T0 + 45 * M, "g1", False)
        s.reading(T0 + H, "g2", True, "B")
        s.reading(T0 + H, "w2", True, "F")
        s.act(T0 + H, "D", "acknowledged")
        s.act(T0 + 90 * M, "B", "assigned", assignee="gas crew 2")
        s.act(T0 + 2 * H, "B", "rectified")
        s.reading(T0 + 2 * H, "g1", True, "E")
        s.act(T0 + 2 * H, "D", "assigned", assignee="police")
        reopened = s.reading(T0 + 2 * H + 5 * M, "g2", True)
        assert reopened is not None and reopened.transition == "reopened"
        s.reading(T0 + 2 * H + 10 * M, "g1", False)
        s.act(T0 + 3 * H, "B", "rectified")
        s.act(T0 + 3 * H, "D", "rectified", note="door repaired")
        s.reading(T0 + 3 * H + 5 * M, "g2", False)
        s.act(T0 + 4 * H, "D", "closed")
        s.until(T0 + 7 * H)
        s.act(T0 + 7 * H, "C", "assigned", assignee="drainage crew")
        s.act(T0 + 8 * H, "C", "rectified")
        s.reading(T0 + 8 * H + 10 * M, "w1", False)
        s.until(T0 + 17 * H)
        s.act(T0 + 17 * H, "F", "resolved")
        s.reading(T0 + 18 * H, "g2", True, "G")
        s.until(END)
    finally:
        store.close()
    return s.run
