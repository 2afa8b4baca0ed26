"""The runner keeps device state out of full garbage collections (see citywatch/streams/gcpolicy.py)."""

from __future__ import annotations

import gc

from citywatch.streams.gcpolicy import FreezeAfterFullCollections


def test_survivors_of_a_full_collection_are_frozen_and_only_then() -> None:
    try:
        policy = FreezeAfterFullCollections()
        frozen = gc.get_freeze_count()
        assert frozen > 0  # start-up's objects
        state = {f"dev-{i}": {"prev": [float(i), 0.0]} for i in range(1000)}  # long-lived, like device state
        policy.check()
        assert gc.get_freeze_count() == frozen  # no full collection ran: nothing new frozen
        gc.collect()
        policy.check()
        assert gc.get_freeze_count() >= frozen + len(state)  # the state survived it: frozen now
        assert state["dev-1"]["prev"] == [1.0, 0.0]
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
