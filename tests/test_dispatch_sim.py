"""The simulated dispatch system is deterministic: each case's plan and team come from the seed and
the case's own key, whatever the order cases arrive in."""

from __future__ import annotations

from collections import Counter

from tests.servers.dispatch import PLANS, DispatchSystem, new_secret


def system(seed: int) -> DispatchSystem:
    return DispatchSystem("http://127.0.0.1:9", new_secret(), new_secret(), seed=seed)


def test_plans_follow_the_seed_and_the_case_not_the_arrival_order() -> None:
    keys = [f"gauge-{i:03d}/water_depth" for i in range(400)]
    one, same, other = system(7), system(7), system(8)
    try:
        forward = [one.draw(k) for k in keys]
        assert [same.draw(k) for k in reversed(keys)] == list(reversed(forward))
        assert [other.draw(k) for k in keys] != forward
        plans = Counter(plan for plan, _ in forward)
        assert set(plans) == set(PLANS)  # every behaviour occurs, roughly as weighted (0.6, 0.2, 0.1, 0.1)
        assert 0.5 < plans["proper"] / len(keys) < 0.7 and plans["never"] > 20
    finally:
        for s in (one, same, other):
            s.server.server_close()
