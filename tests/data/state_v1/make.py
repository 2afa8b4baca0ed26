"""Writes the stored-state fixture of format 1 (the dict-per-detector state of releases up to
commit 1926773), so tests can load it with the current code: `python tests/data/state_v1/make.py`.

Run once with that release; kept for the record. For one device of each kind: eight simulated days
with incidents through the pipeline core, then the device's stored state (msgpack, as the SQLite
store and the Faust table wrote it), its alert-engine keys, the transitions the next simulated day produced from
there and the state at the end of that day (the behaviour a migrated state must reproduce).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from citywatch.detectors.baseline import plain_hook  # noqa: E402
from citywatch.ingest.simulator import Simulator, make_devices  # noqa: E402
from citywatch.model import KINDS, Output  # noqa: E402
from tests.helpers import T0, make_pipeline  # noqa: E402

DAY = 86400.0


def transitions(out: Output) -> list[list[object]]:
    return [[t.alert.rule, t.transition, t.alert.severity, round(t.at, 3), t.alert.value] for t in out.transitions]


def main() -> None:
    encode = msgspec.msgpack.Encoder(enc_hook=plain_hook).encode
    for kind in KINDS:
        device = next(d for d in make_devices(60, seed=4) if d.kind == kind)
        pipeline = make_pipeline(device)
        out = Output()
        for topic, payload, ts in Simulator([device], seed=4, start=T0, incident_rate=1.0,
                                            horizon_s=7 * DAY).messages(8 * DAY):
            pipeline.process(topic, payload, ts + 0.2, out)
        engine = pipeline.alerts
        keys = {rule: msgspec.json.decode(msgspec.json.encode(state))
                for (device_id, rule) in list(engine.by_key) + list(engine.pending)
                if (state := engine.export_key((device_id, rule))) is not None}
        (HERE / f"{kind}.state").write_bytes(encode(pipeline.states[device.id]))
        later = Output()
        for topic, payload, ts in Simulator([device], seed=5, start=T0 + 8 * DAY, incident_rate=1.0,
                                            horizon_s=DAY).messages(DAY):
            pipeline.process(topic, payload, ts + 0.2, later)
            pipeline.tick(ts + 0.2, later)
        (HERE / f"{kind}.next.state").write_bytes(encode(pipeline.states[device.id]))
        (HERE / f"{kind}.json").write_text(json.dumps(
            {"device": msgspec.json.decode(msgspec.json.encode(device)), "keys": keys,
             "next_day": transitions(later)}, indent=1))
        print(kind, len(later.transitions), "transitions on the next day")


if __name__ == "__main__":
    main()
