"""Bulk paths around Faust for the `process` worker: the telemetry topic in batches, the `devices`
changelog in batches.

Why: Faust handles every message as an event (a Message, an Event, a channel queue, a stream step,
an ack, a task per callback) and every Table write as one buffered produce with its own callback:
profiled at about 60% of a worker's CPU at 100k devices, more than the core itself. Here:

- `BulkConsumer` is Faust's aiokafka consumer whose fetch loop hands each fetch's telemetry records
  (aiokafka `ConsumerRecord`s, per partition, in offset order) to one coroutine, then marks their
  offsets as acknowledged in Faust's own bookkeeping, so Faust's commit (which flushes the producer
  first) commits them as before. Records of other topics (the sink's topics in role `all`) take
  Faust's per-message path unchanged.
- `recover_in_bulk`: the `devices` changelog records Faust's recovery reads (actives after a
  rebalance, standbys all along) go into the store a fetch at a time with one write batch, not one
  event at a time through Faust's queue (profiled: ~0.4 ms per record, most of a cold recovery).
- `ChangelogWriter` writes a batch's device records to the Table's store and produces them to the
  changelog as one record batch per partition, waits for the broker's acks (acks=all), then sets the
  store's persisted offset per partition (what Faust's per-record callback did).
- `Holds`: with `ingest.state_checkpoint_s` a quiet device's record is written later than its batch
  (checkpoint.py). Its telemetry offsets are then held back (not acknowledged, so not committed)
  until its record is written: a crash replays them into the records last written, exactly as they
  ran the first time, so it loses no learning and no alert (its transitions come again with the same
  ids, which the sink drops). A revocation or a stop writes every held record first (`flush`).

Group membership, rebalances, Table recovery, standbys and commits stay Faust's.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP

from citywatch.streams.bridge import partition_for

Records = Mapping[TP, Sequence[Any]]  # per partition, aiokafka ConsumerRecords in offset order
Write = tuple[bytes, bytes | None]  # a device's key and its record (None: delete)
Hold = Mapping[TP, int]  # per partition: offsets from this one on are not to be acknowledged yet


class Holds:
    """Batches with device records not written yet: per partition the first offset of the oldest such
    batch is the hold (kept per batch, not per device, so it does not depend on how messages are keyed).
    O(1) amortised per batch: a device's first unwritten batch only grows."""

    def __init__(self) -> None:
        self.batch_of: dict[str, int] = {}  # device -> the batch its record was first left unwritten in
        self.live: dict[int, int] = {}  # batch -> its devices still unwritten
        self.queues: dict[TP, deque[tuple[int, int]]] = {}  # per partition (batch, its first offset there)
        self.next = 0

    def note(self, device_ids: Iterable[str], firsts: Mapping[TP, int]) -> None:
        """These devices' records changed in a batch starting at `firsts` and are not written (a device
        already waiting keeps its older batch)."""
        batch, batch_of, count = self.next, self.batch_of, 0
        for device_id in device_ids:
            if device_id not in batch_of:
                batch_of[device_id] = batch
                count += 1
        if count:
            self.live[batch] = count
            for tp, offset in firsts.items():
                self.queues.setdefault(tp, deque()).append((batch, offset))
            self.next += 1

    def written(self, device_ids: Iterable[str]) -> None:
        batch_of, live = self.batch_of, self.live
        for device_id in device_ids:
            batch = batch_of.pop(device_id, None)
            if batch is not None:
                live[batch] -= 1
                if not live[batch]:
                    del live[batch]

    def lowest(self) -> dict[TP, int]:
        """The hold per partition (partitions without one are absent)."""
        live = self.live
        hold: dict[TP, int] = {}
        for tp, queue in self.queues.items():
            while queue and queue[0][0] not in live:
                queue.popleft()
            if queue:
                hold[tp] = queue[0][1]
        return hold

    def clear(self) -> None:
        self.batch_of.clear()
        self.live.clear()
        self.queues.clear()


class BulkConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer; records of `bulk_topic` go to `on_bulk` a fetch at a time and are
    acknowledged when it returns (a subclass names the topic and implements `on_bulk`)."""

    bulk_topic: str | None = None
    bulk_size = 500
    in_flight = 4  # batches processed whose changelog records are not acknowledged yet

    async def on_bulk(self, records: Records) -> tuple[Awaitable[None], Hold]:
        """Process a batch; returns what completes once its results are durable (then its offsets are
        acknowledged, so Faust commits them), and the offsets to hold back until later records are
        written (Holds)."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Write every record held back (before a revocation's or a stop's commit); `release({})` then."""

    def recover(self, tp: TP, records: Sequence[Any]) -> bool:
        """Apply these changelog records in bulk if they are the Table's being recovered (or kept as
        a standby); False: give them to Faust's per-message path."""
        return False

    async def wait_empty(self) -> None:
        """Faust's last commit before a revocation or a stop: first the batches under way and the held
        records, so the commit covers every offset processed (the next owner redoes nothing)."""
        try:
            await self._settle(0)
            await self.flush()
        except Exception:  # nothing lost: what is not committed is redone from the records written
            self.log.exception("writing the held device records before the commit failed")
        await super().wait_empty()

    async def _ack_when(self, written: Awaitable[None], offsets: dict[TP, Sequence[int]], generation: int,
                        hold: Hold) -> None:
        await written
        if self.app.consumer_generation_id != generation:  # the new owners redo them
            return
        held = self._held_offsets()
        for tp, taken in offsets.items():
            held.setdefault(tp, deque()).append(taken)
        self.release(hold)

    def _held_offsets(self) -> dict[TP, deque[Sequence[int]]]:
        """Per partition, the offsets of batches processed and written, a batch at a time (a range when
        contiguous: minutes of held offsets cost little memory), waiting for the hold to rise;
        forgotten at a new generation."""
        generation = self.app.consumer_generation_id
        if getattr(self, "_held_generation", None) != generation:
            self._held: dict[TP, deque[Sequence[int]]] = {}
            self._held_generation = generation
        return self._held

    def release(self, hold: Hold) -> None:
        """Acknowledge the held offsets below each partition's hold (all of a partition without one),
        oldest batch first (one that completed out of order waits for those before it)."""
        held = self._held_offsets()
        for tp in list(held):
            chunks, limit = held[tp], hold.get(tp)
            ready: list[int] = []
            while chunks:
                chunk = chunks[0]
                if limit is None or chunk[-1] < limit:
                    ready.extend(chunk)
                    chunks.popleft()
                    continue
                if chunk[0] < limit:
                    cut = bisect_left(chunk, limit)
                    ready.extend(chunk[:cut])
                    chunks[0] = chunk[cut:]
                break
            if ready:
                self.ack_records(tp, ready)
            if not chunks:
                del held[tp]

    async def _settle(self, keep: int) -> None:
        """Wait until at most `keep` batches are unacknowledged (raising what their writes raised)."""
        pending: deque[asyncio.Future[None]] = getattr(self, "_pending", deque())
        while pending and (len(pending) > keep or pending[0].done()):
            await pending.popleft()

    def ack_records(self, tp: TP, offsets: Sequence[int]) -> None:
        """What `Consumer.ack` does per message, for a processed batch of one partition."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offsets = [o for o in offsets if o >= committed]
        index = self._acked_index[tp]
        fresh = [o for o in offsets if o not in index]
        index.update(fresh)
        self._acked[tp].extend(fresh)
        self._n_acked += len(fresh)

    async def _take(self, bulk: Records, generation: int) -> None:
        """`bulk_size` records at a time through `on_bulk`, each batch acknowledged when it returns;
        none once a rebalance began (they are fetched again from the committed offsets)."""
        for tp, records in bulk.items():
            await self._note_gaps(tp, [r.offset for r in records])
        items = [(tp, r) for tp, records in bulk.items() for r in records]
        for start in range(0, len(items), self.bulk_size):
            if not self.flow_active or self.app.consumer_generation_id != generation or self.should_stop:
                return
            batch: dict[TP, list[Any]] = {}
            for tp, record in items[start:start + self.bulk_size]:
                batch.setdefault(tp, []).append(record)
            written, hold = await self.on_bulk(batch)
            for tp, records in batch.items():
                self._read_offset[tp] = records[-1].offset
            offsets = {tp: offsets_of(records) for tp, records in batch.items()}
            self._pending.append(asyncio.ensure_future(self._ack_when(written, offsets, generation, hold)))
            await self._settle(self.in_flight)

    async def _note_gaps(self, tp: TP, offsets: Sequence[int]) -> None:
        """Offsets the broker skipped (e.g. transaction markers) must not hold the commit back."""
        previous = self._read_offset[tp]
        for offset in offsets:
            if previous is not None and offset - previous > 1:
                await self._add_gap(tp, previous + 1, offset - 1)
            previous = offset

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (a live broker's loop)
        """Faust's fetch loop (transport/consumer.py), with the bulk topic taken a fetch at a time."""
        callback = self.callback
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        self._pending: deque[asyncio.Future[None]] = deque()
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await self._settle(self.in_flight)
                self.diag.set_flag(CONSUMER_FETCHING)
                generation = self.app.consumer_generation_id
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:  # a rebalance began: the new owners start from the commits
                    await self.perform_seek()
                    continue
                bulk: dict[TP, Sequence[Any]] = {}
                for tp, batch in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    last = read_offset[tp]
                    fresh = batch if last is None else [r for r in batch if r.offset >= last]  # as Faust's
                    if not fresh:
                        continue
                    if tp.topic == self.bulk_topic:
                        bulk[tp] = fresh
                        continue
                    if self.recover(tp, fresh):
                        read_offset[tp] = fresh[-1].offset
                        continue
                    for record in fresh:  # Faust's per-message path
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        if acks_enabled_for(tp.topic):
                            await self._note_gaps(tp, [record.offset])
                        await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
                        read_offset[tp] = record.offset
                if bulk:
                    await self._take(bulk, generation)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def offsets_of(records: Sequence[Any]) -> Sequence[int]:
    """A partition's records' offsets (ascending): a range when contiguous (the usual case)."""
    first, last = records[0].offset, records[-1].offset
    if last - first + 1 == len(records):
        return range(first, last + 1)
    return [r.offset for r in records]


async def _done() -> None:
    """Nothing to wait for."""


def recover_in_bulk(app: Any, table: Any, tp: TP, records: Sequence[Any]) -> bool:
    """What Faust's recovery (tables/recovery.py `_slurp_changelogs`) does per changelog event, for a
    fetch of the Table's changelog partition at once: records past the offset recovery has applied go
    into the store (one write batch for RocksDB, as Faust's own `apply_changelog_batch`), the store's
    persisted offset and recovery's offset move to the last one, and once no active partition has
    records left, recovery ends (as Faust signals it). False for a partition recovery is not reading
    (Faust's path says so). Every record of the partition takes this path, so none overtakes another
    still queued in Faust's."""
    recovery = app.tables.recovery
    if recovery.tp_to_table.get(tp) is not table:
        return False
    if tp in recovery.active_tps:
        offsets = recovery.active_offsets
    elif tp in recovery.standby_tps:
        offsets = recovery.standby_offsets
    else:
        return False
    seen = offsets.get(tp)
    fresh = records if seen is None else [r for r in records if r.offset > seen]
    if fresh:
        store = table.data
        if hasattr(store, "_db_for_partition"):
            batch = write_batch(store)
            for r in fresh:
                if r.value is None:
                    batch.delete(r.key)
                else:
                    batch.put(r.key, r.value)
            store._db_for_partition(tp.partition).write(batch)
        else:
            for r in fresh:
                if r.value is None:
                    store.pop(r.key, None)
                else:
                    store[r.key] = r.value
        store.set_persisted_offset(tp, fresh[-1].offset)
        offsets[tp] = fresh[-1].offset
    if recovery.in_recovery and tp in recovery.active_tps and not recovery.need_recovery():
        recovery.flush_buffers()  # as Faust's _maybe_signal_recovery_end
        recovery._set_recovery_ended()
        recovery.signal_recovery_end.set()
    return True


def write_batch(store: Any) -> Any:
    """An empty write batch for the store's RocksDB driver (rocksdict or python-rocksdb)."""
    if store.use_rocksdict:
        import rocksdict

        return rocksdict.WriteBatch(raw_mode=True)
    from faust.stores import rocksdb as faust_rocksdb

    driver: Any = faust_rocksdb.__dict__["rocksdb"]  # the python-rocksdb module Faust's store imported
    return driver.WriteBatch()


class ChangelogWriter:
    """A batch of device records into the Table's store and changelog, the changelog acknowledged."""

    def __init__(self, table: Any, partitions: int) -> None:
        self.table = table
        self.partitions = partitions

    async def write(self, writes: Sequence[Write]) -> Awaitable[None]:
        """Write the store, queue the changelog records; returns what completes once the broker
        acknowledged them (and the store's persisted offsets moved past them)."""
        if not writes:
            return _done()
        store = self.table.data
        rocks = hasattr(store, "_db_for_partition")  # DeviceStore: one database per partition
        by_partition: dict[int, list[Write]] = {}
        for key, value in writes:
            by_partition.setdefault(partition_for(key, self.partitions), []).append((key, value))
        for partition, items in by_partition.items():
            if rocks:  # one write batch per database, as Faust's changelog recovery writes
                batch = write_batch(store)
                for key, value in items:
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
                continue
            for key, value in items:
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
        topic = self.table.changelog_topic.get_topic_name()
        producer = self.table.app.producer._ensure_producer()  # aiokafka's, started with the app
        sent: list[tuple[int, int, asyncio.Future[Any]]] = []
        for partition, items in by_partition.items():
            builder, count = producer.create_batch(), 0
            for key, value in items:
                if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    sent.append((partition, count, await producer.send_batch(builder, topic, partition=partition)))
                    builder, count = producer.create_batch(), 0
                    if builder.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"changelog record of {len(value or b'')} B exceeds the producer's batch")
                count += 1
            sent.append((partition, count, await producer.send_batch(builder, topic, partition=partition)))
        return self._acknowledged(store, topic, sent)

    async def _acknowledged(self, store: Any, topic: str, sent: list[tuple[int, int, asyncio.Future[Any]]]) -> None:
        last: dict[int, int] = {}
        for partition, count, future in sent:
            meta = await future
            last[partition] = max(last.get(partition, -1), meta.offset + count - 1)
        for partition, offset in last.items():
            store.set_persisted_offset(TP(topic, partition), offset)
