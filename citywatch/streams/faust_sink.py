"""The Faust runner's sink side: alert store, webhook outbox and delivery, and the HTTP API.

`TransitionSink` writes what the `deliver` and `deadletters` agents consume into the SQLite alert
store in one transaction with the webhook outbox (`WebhookDelivery` drains it), dropping
transition ids it has already stored: Kafka redelivers after a rebalance, webhooks go out once.
Its HTTP API is citywatch/streams/sink_api.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

import msgspec

from citywatch.config import Settings
from citywatch.loop.incidents import open_book
from citywatch.loop.silence_book import SilenceBook
from citywatch.model import Alert, DeadLetter, Output, Transition
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import Outbox, WebhookDelivery

_decode_alert = msgspec.json.Decoder(Alert).decode


# -- the store and outbox ----------------------------------------------------------------------------------------

class TransitionSink:
    """Alert store + webhook outbox in one SQLite transaction, idempotent by transition id."""

    def __init__(self, settings: Settings) -> None:
        path = store_path(settings.data_dir)
        self.outbox = Outbox(settings.webhooks, levels=settings.alerts.escalation.levels,
                             safety_rules=settings.alerts.safety_rules)  # level routes, silences
        self.store = AlertStore(path, hooks=[self.outbox.enqueue])
        self.delivery = WebhookDelivery(path, settings.webhooks)
        # silences (set with `citywatch silences`, direct: the sink holds no data-dir lock) release on tick()
        self.silences = SilenceBook(self.store.conn, settings, on_release=self.delivery.notify)
        self.counters: Counter[str] = Counter()
        # Incidents are grouped here: this is the one consumer of every partition's transitions (its own
        # consumer group, one sink), and it owns the store the grouping commits with.
        self.incidents, start = open_book(settings.incidents, self.store, time.time())
        changes = self.incidents.take_changes()
        if start.incident_transitions or changes.incidents or changes.members:
            self.store.commit(start, [], {}, incidents=changes.incidents, members=changes.members)

    def _unseen(self, transitions: list[Transition]) -> list[Transition]:
        ids = list({t.id for t in transitions})
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.store.conn.execute(
                f"SELECT id FROM transitions WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            known.update(row[0] for row in rows)
        fresh = []
        for t in transitions:
            if t.id not in known:
                known.add(t.id)
                fresh.append(t)
        return fresh

    def write(self, transitions: list[Transition], dead_letters: Iterable[DeadLetter] = ()) -> Output:
        """Store what is new; returns it (transitions already stored are dropped: redeliveries)."""
        out = Output()
        out.transitions = self._unseen(transitions) if transitions else []
        out.dead_letters = list(dead_letters)
        self.counters["duplicates"] += len(transitions) - len(out.transitions)
        if not out.transitions and not out.dead_letters:
            return out
        latest = {t.alert.id: t.alert for t in out.transitions}  # in order: the last snapshot wins
        self.incidents.group(out)
        changes = self.incidents.take_changes()
        try:
            self.store.commit(out, latest.values(), {}, incidents=changes.incidents, members=changes.members)
        except BaseException:
            self.incidents.give_back(changes)
            raise
        self.counters["transitions"] += len(out.transitions)
        self.counters["dead_letters"] += len(out.dead_letters)
        if out.transitions or out.incident_transitions:
            self.delivery.notify()
        return out

    def close(self) -> None:
        self.delivery.close()
        self.store.close()
