"""One record per device: the pipeline's own facts (event time, seq window, liveness) and one small
typed state per rule of the device's kind, and the one stored form both runners use.

Rules are stateless objects; each declares its state as a `RuleState` subclass (typed attributes,
named in `FIELDS`: compiled by mypyc they hold numbers unboxed) and is handed it with the record on
every reading. The record keeps the states in the kind's rule order.

Stored form (format 2, msgpack): `[2, kind, ts, seq, seqmask, count, seen, timeout, online_at,
{rule name: [the state's FIELDS values]}]`, a number array as its bytes (little-endian; a
list of numbers, as stored before, is read too). States are keyed by rule name, so a rule added or
removed by configuration gets a fresh state or is dropped, and the others keep theirs. Format 1
(releases up to issue 16: one dict per device, one-letter keys per rule) is migrated on load: each
state names the format-1 keys of its fields in `V1`, each rule its format-1 key in `v1_key`.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol

import msgspec

FORMAT: Final = 2
LITTLE_ENDIAN: Final = sys.byteorder == "little"
UNSET: Final = math.nan  # a number not known yet: a float (unboxed in a compiled record, unlike None)


def known(value: float) -> bool:
    """False for UNSET."""
    return value == value


class RuleState:
    """A rule's per-device state. `FIELDS` are its attributes in stored order; `V1` the keys the
    same values had in format 1 (a nested state migrates from a nested dict)."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()
    V1: ClassVar[tuple[str, ...]] = ()

    def dump(self) -> list[Any]:
        """The state as plain data (lists, numbers), in `FIELDS` order."""
        return [_dump(getattr(self, name)) for name in self.FIELDS]

    def restore(self, values: Sequence[Any]) -> None:
        """Set the fields from `dump()`'s output (missing trailing values keep their fresh ones)."""
        for name, value in zip(self.FIELDS, values, strict=False):
            setattr(self, name, _load(getattr(self, name), value))

    def restore_v1(self, old: Mapping[str, Any]) -> None:
        """Set the fields from a format-1 dict."""
        for name, key in zip(self.FIELDS, self.V1, strict=True):
            if key in old:
                current = getattr(self, name)
                if isinstance(current, RuleState):
                    current.restore_v1(old[key])
                else:
                    setattr(self, name, _load(current, old[key]))


def _dump(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None  # UNSET: stored as nil
    if isinstance(value, RuleState):
        return value.dump()
    if isinstance(value, array):
        # as bytes, not a list: a 96-float baseline took 4 us as 96 float objects and 864 B of msgpack,
        # as bytes 0.2 us and 384 B (quiet devices' values are written 3,300 a second at 1M devices)
        return value.tobytes() if LITTLE_ENDIAN else _swapped(value).tobytes()
    if isinstance(value, list):
        return list(value)
    return value


def _load(current: Any, value: Any) -> Any:
    """`value` (plain data) in the type of the fresh field `current`. None (nil) is the fresh value,
    whatever the field: an unset number (format 1 kept None where this keeps UNSET or -1)."""
    if value is None:
        return current
    if isinstance(current, RuleState):
        current.restore(value)
        return current
    if isinstance(current, array):
        if isinstance(value, bytes):
            # frombytes over-allocates (a 96-float array 500 B, not 464): copied, it is exact
            read = array(current.typecode, value)
            return array(current.typecode, read) if LITTLE_ENDIAN else _swapped(read)
        return array(current.typecode, value)
    if isinstance(current, list):
        return list(value)
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    return value


def _swapped(values: array[Any]) -> array[Any]:
    copy = array(values.typecode, values)
    copy.byteswap()
    return copy


class StatefulRule(Protocol):
    """What the record needs of a rule (see base.Rule)."""

    name: str
    v1_key: str

    def fresh(self) -> RuleState | None: ...


class DeviceRecord:
    """Everything the core keeps for one device between readings."""

    __slots__ = ("kind", "ts", "seq", "seqmask", "count", "seen", "timeout", "online_at", "states")

    def __init__(self, kind: str, states: list[Any]) -> None:
        self.kind = kind
        self.ts = UNSET  # newest event time processed (late readings are older)
        self.seq = -1  # highest seq accepted (-1: none yet)
        self.seqmask = 0  # which of the SEQ_WINDOW seqs below `seq` were accepted
        self.count = 0  # readings accepted, ever
        self.seen = UNSET  # received time of the last data that proved it alive
        self.timeout = UNSET  # its offline timeout, as of that data
        self.online_at = 0.0  # received time of the last `online` status
        self.states = states  # one per rule of the kind, in rule order (None: a rule without state)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class RecordCodec:
    """Builds, stores and loads device records for a rule set (rules per kind, in order)."""

    def __init__(self, rules: Mapping[str, Sequence[StatefulRule]]) -> None:
        self.rules = {kind: list(kind_rules) for kind, kind_rules in rules.items()}
        for kind, kind_rules in self.rules.items():
            names = [rule.name for rule in kind_rules]
            if len(set(names)) != len(names):
                raise ValueError(f"rules of kind {kind} share a name: {names}")

    def fresh(self, kind: str) -> DeviceRecord:
        return DeviceRecord(kind, [rule.fresh() for rule in self.rules[kind]])

    def encode(self, record: DeviceRecord) -> bytes:
        states = {rule.name: state.dump()
                  for rule, state in zip(self.rules[record.kind], record.states, strict=True) if state is not None}
        return _encode([FORMAT, record.kind, _dump(record.ts), record.seq if record.seq >= 0 else None,
                        record.seqmask, record.count,
                        _dump(record.seen), _dump(record.timeout), record.online_at, states])

    def decode(self, stored: bytes | Mapping[str, Any], kind: str) -> DeviceRecord:
        """The record from its stored form, for a device of `kind` (the registry's word: a stored
        record of another kind, as after re-registration, starts fresh)."""
        data = _plain(stored)
        record = self.fresh(kind)
        if isinstance(data, Mapping):
            self._from_v1(record, data)
            return record
        if not isinstance(data, list) or len(data) < 10 or data[0] != FORMAT:
            raise ValueError(f"unknown stored device record (format {data[0] if isinstance(data, list) else '?'})")
        if data[1] != kind:
            return record
        record.ts, record.seen, record.timeout = _number(data[2]), _number(data[6]), _number(data[7])
        record.seq = -1 if data[3] is None else data[3]
        record.seqmask, record.count, record.online_at = data[4], data[5], float(data[8])
        states: Mapping[str, Any] = data[9]
        for rule, state in zip(self.rules[kind], record.states, strict=True):
            if state is not None and rule.name in states:
                state.restore(states[rule.name])
        return record

    def _from_v1(self, record: DeviceRecord, old: Mapping[str, Any]) -> None:
        record.ts = _number(old.get("ts"))
        record.seq = old.get("seq", -1)
        record.seqmask = old.get("seqmask", 1 if record.seq >= 0 else 0)  # format 1's reading of no mask
        record.count = old.get("count", 0)
        record.seen = _number(old.get("seen"))
        record.timeout = _number(old.get("timeout"))
        record.online_at = float(old.get("online_at", 0.0))
        for rule, state in zip(self.rules[record.kind], record.states, strict=True):
            if state is None:
                continue
            found = old.get(rule.v1_key)
            if isinstance(found, Mapping):
                state.restore_v1(found)
            elif found is not None:  # a one-value state was the value itself
                state.restore([found])


def _plain(stored: bytes | Mapping[str, Any]) -> Any:
    """A stored record as plain data: msgpack decoded; format 1 may come as a dict already (Faust)."""
    return _decode(stored) if isinstance(stored, bytes | bytearray | memoryview) else stored


def _number(value: Any) -> float:
    return UNSET if value is None else float(value)


HEADER = ("ts", "seq", "seqmask", "count", "seen", "timeout", "online_at")


def stored_header(stored: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's own facts (HEADER, None where unknown) from a stored record of any known
    format, read without the rules: reports, `devices check` and tests read them. An unknown
    format (a newer release's) raises ValueError, as decoding it would: a restart refuses it at once."""
    data = _plain(stored)
    if isinstance(data, Mapping):
        return {name: data.get(name) for name in HEADER}
    if isinstance(data, list) and len(data) >= 10 and data[0] == FORMAT:
        return dict(zip(HEADER, data[2:9], strict=True))
    raise ValueError(f"unknown stored device record (format {data[0] if isinstance(data, list) else '?'})")


def stored_seen(stored: bytes | Mapping[str, Any]) -> float | None:
    """When a device's last data arrived, from its stored record of any format."""
    seen = stored_header(stored)["seen"]
    return float(seen) if isinstance(seen, int | float) else None
