"""The checkpoint's trickle of quiet devices' records (streams/checkpoint.py): paced by time, not by batches."""

from __future__ import annotations

from citywatch.streams.checkpoint import COMPACT_AFTER, MIN_RATE, PACE_MARGIN, Checkpoint


def waiting(count: int, every_s: float, budget: int = 250) -> Checkpoint:
    checkpoint = Checkpoint(every_s, budget)
    assert checkpoint.due([f"d{i}" for i in range(count)], (), now=0.0) == []
    return checkpoint


def test_many_small_batches_write_at_the_pace_not_a_budget_each() -> None:
    """A loop turning every millisecond would have written 250 a batch: the whole city at once."""
    checkpoint = waiting(100_000, every_s=100.0)
    written = 0
    for step in range(2001):  # 2 s of 1 ms batches, every device due
        written += len(checkpoint.due((), (), now=100.0 + step / 1000))
    pace = PACE_MARGIN * 100_000 / 100.0  # 1,250 a second
    assert 250 + 2 * pace * 0.95 <= written <= 250 + 2 * pace


def test_few_large_batches_write_at_most_a_budget_each() -> None:
    checkpoint = waiting(100_000, every_s=100.0, budget=250)
    assert [len(checkpoint.due((), (), now=100.0 + step * 5.0)) for step in range(3)] == [250, 250, 250]


def test_a_small_city_is_written_at_once() -> None:
    checkpoint = waiting(100, every_s=30.0)
    assert len(checkpoint.due((), (), now=30.0)) == 100


def test_the_floor_rate_serves_a_city_whose_pace_is_slow() -> None:
    checkpoint = waiting(2_000, every_s=3600.0, budget=250)
    assert len(checkpoint.due((), (), now=3600.0)) == 250  # the allowance it started with
    assert len(checkpoint.due((), (), now=3600.5)) == int(0.5 * MIN_RATE)


def test_urgent_devices_are_written_whatever_the_pace() -> None:
    checkpoint = waiting(1_000, every_s=100.0, budget=10)
    assert len(checkpoint.due((), (), now=100.0)) == 10
    urgent = {f"d{i}" for i in range(500, 600)}
    due = checkpoint.due(urgent, urgent, now=100.0)
    assert set(due) == urgent and not urgent & set(checkpoint.unsaved)


def test_none_is_written_before_it_has_waited_the_checkpoint() -> None:
    checkpoint = waiting(1_000, every_s=100.0)
    assert checkpoint.due((), (), now=99.9) == []
    assert len(checkpoint.due((), (), now=100.0)) == 250


def test_the_oldest_is_found_without_walking_the_slots_of_those_written() -> None:
    """A dict keeps deleted entries' slots until resized; the queue is compacted, in the same order."""
    checkpoint = waiting(400_000, every_s=100.0, budget=250)
    before = checkpoint.unsaved
    written: list[str] = []
    for step in range(300):  # 75,000 written from the front, in 250s
        written += checkpoint.due((), (), now=1000.0 + step * 10.0)
    assert checkpoint.unsaved is not before  # compacted at least once
    assert written == [f"d{i}" for i in range(75_000)]
    assert list(checkpoint.unsaved) == [f"d{i}" for i in range(75_000, 400_000)]
    assert checkpoint.front_deleted <= COMPACT_AFTER
