"""Replay a CSV through the detectors, one row at a time, with no look-ahead.

Input: a header row, then `timestamp,value` (a generic numeric signal: the generic detector) or,
with a kind, `timestamp` and the kind's fields (gas: lel_pct[,co_ppm]; noise: laeq_db[,lamax_db];
water: depth_cm; parking: occupied; lock: event[,user]) plus optionally battery, rssi, seq. A
kind's rows run through the real pipeline core (validation, threshold rules, learned detectors,
alert lifecycle) as one synthetic device. Timestamps: epoch seconds (or milliseconds), or ISO
8601 (without an offset: UTC).

Output: one row per input row, `timestamp,is_alert,anomaly_score` and, with a kind, `rules`.
is_alert is 1 on the row where an alert opens (for a kind: any rule's alert opened by that row,
flapping openings included) and 0 while it stays open; `rules` names the rules whose alerts that
row opened (`;`-separated, empty otherwise); anomaly_score is in [0, 1], higher for more anomalous
(for a kind: the highest learned detector's score, 0.5 at its alert threshold). A kind's row that
fails validation scores 0. Silence (offline) and deadlines need a clock and are not replayed.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click
import msgspec
import numpy as np

from citywatch.config import Settings, load_settings
from citywatch.detectors.baseline import LearnedRule
from citywatch.detectors.generic import GenericDetector
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import CitywatchError
from citywatch.ingest.schemas import KIND_FIELDS
from citywatch.ingest.topics import telemetry_topic
from citywatch.model import KINDS, Device
from citywatch.streams.pipeline import Output, Pipeline

REPLAY_DEVICE = "replay"
_COMMON = ("battery", "rssi", "seq")
_TRUE = {"1", "true", "yes", "y", "t", "occupied"}


class ReplayError(CitywatchError):
    """A CSV replay cannot start (bad header, unknown column, unreadable file)."""


@dataclass
class ReplayStats:
    rows: int = 0
    alerts: int = 0
    invalid: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


# -- parsing ------------------------------------------------------------------------------------


def parse_timestamps(raw: Sequence[str]) -> np.ndarray:
    """Epoch seconds (float64) of each timestamp string: numbers (ms when > 1e11) or ISO 8601."""
    try:
        ts = np.asarray(raw, dtype=np.float64)
        return np.where(ts > 1e11, ts / 1000.0, ts)
    except ValueError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about offsets: those go the slow way
            stamps = np.asarray([s.strip().replace(" ", "T", 1) for s in raw], dtype="datetime64[ms]")
        return stamps.astype(np.int64) / 1000.0
    except (ValueError, UserWarning, DeprecationWarning):
        pass
    out = np.empty(len(raw))
    for i, s in enumerate(raw):
        try:
            parsed = datetime.fromisoformat(s.strip())
        except ValueError:
            raise ReplayError(f"row {i + 2}: bad timestamp {s!r}") from None
        out[i] = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return out


def parse_numbers(raw: Sequence[str]) -> np.ndarray:
    """float64 per string; empty or unparsable ones become NaN."""
    try:
        return np.asarray(raw, dtype=np.float64)
    except ValueError:
        out = np.empty(len(raw))
        for i, s in enumerate(raw):
            try:
                out[i] = float(s)
            except ValueError:
                out[i] = math.nan
        return out


def read_columns(handle: TextIO) -> tuple[list[str], list[list[str]]]:
    reader = csv.reader(handle)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ReplayError("empty input: a header row is needed") from None
    columns: list[list[str]] = [[] for _ in header]
    width = len(header)
    for row in reader:
        if not row:
            continue
        if len(row) < width:
            row = row + [""] * (width - len(row))
        for column, cell in zip(columns, row, strict=False):
            column.append(cell)
    return header, columns


def write_rows(handle: TextIO, stamps: Sequence[str], alerts: Sequence[int], scores: Sequence[float],
               rules: Sequence[str] | None = None) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    formatted = (f"{s:.6f}" for s in scores)
    if rules is None:
        writer.writerow(("timestamp", "is_alert", "anomaly_score"))
        writer.writerows(zip(stamps, alerts, formatted, strict=True))
    else:
        writer.writerow(("timestamp", "is_alert", "anomaly_score", "rules"))
        writer.writerows(zip(stamps, alerts, formatted, rules, strict=True))


# -- the generic signal -------------------------------------------------------------------------


def replay_generic(header: list[str], columns: list[list[str]]) -> tuple[list[int], list[float]]:
    if "timestamp" not in header:
        raise ReplayError("the header needs a timestamp column")
    if "value" in header:
        value_col = header.index("value")
    elif len(header) == 2:
        value_col = 1 - header.index("timestamp")
    else:
        raise ReplayError("the header needs a value column (or give --kind)")
    ts = parse_timestamps(columns[header.index("timestamp")]).tolist()
    values = parse_numbers(columns[value_col]).tolist()
    detector = GenericDetector()
    process = detector.process
    alerts: list[int] = []
    scores: list[float] = []
    add_alert, add_score = alerts.append, scores.append
    for value, t in zip(values, ts, strict=True):
        alert, score = process(value, t)
        add_alert(1 if alert else 0)
        add_score(score)
    return alerts, scores


# -- a device kind ------------------------------------------------------------------------------


def _kind_payloads(kind: str, header: list[str], columns: list[list[str]]) -> Iterator[dict[str, Any]]:
    fields = KIND_FIELDS[kind]
    if "timestamp" not in header:
        raise ReplayError("the header needs a timestamp column")
    unknown = [h for h in header if h != "timestamp" and h not in fields and h not in _COMMON]
    if unknown:
        raise ReplayError(f"unknown columns for kind {kind}: {', '.join(unknown)} "
                          f"(expected {', '.join(fields + _COMMON)})")
    if fields[0] not in header:
        raise ReplayError(f"kind {kind} needs a {fields[0]} column")
    ts = parse_timestamps(columns[header.index("timestamp")]).tolist()
    numeric: dict[str, list[float]] = {}
    text: dict[str, list[str]] = {}
    for name, column in zip(header, columns, strict=True):
        if name == "timestamp":
            continue
        if name in ("event", "user"):
            text[name] = [c.strip() for c in column]
        elif name == "occupied":
            numeric[name] = [1.0 if c.strip().lower() in _TRUE else 0.0 if c.strip() else math.nan for c in column]
        else:
            numeric[name] = parse_numbers(column).tolist()
    for i, t in enumerate(ts):
        payload: dict[str, Any] = {"ts": t}
        for name, values in numeric.items():
            v = values[i]
            if v == v:  # not NaN: an empty cell is a missing field
                payload[name] = bool(v) if name == "occupied" else int(v) if name == "seq" else v
        for name, cells in text.items():
            if cells[i]:
                payload[name] = cells[i]
        yield payload


_OPENINGS = ("opened", "flapping")


def replay_kind(kind: str, header: list[str], columns: list[list[str]], settings: Settings,
                device: Device) -> tuple[list[int], list[float], list[str], int]:
    registry = {device.id: device}
    pipeline = Pipeline(settings, registry, AlertEngine(settings.alerts))
    learned = [r for r in pipeline.rules[kind] if isinstance(r, LearnedRule)]
    topic = telemetry_topic(kind, device.id, settings.mqtt.topic_prefix)
    encode = msgspec.json.Encoder().encode
    alerts: list[int] = []
    scores: list[float] = []
    opened_rules: list[str] = []
    invalid = 0
    for payload in _kind_payloads(kind, header, columns):
        for rule in learned:
            rule.last_score = 0.0
        out = Output()
        pipeline.process(topic, encode(payload), payload["ts"], out)
        if out.dead_letters:
            invalid += 1
        opened = ";".join(t.alert.rule for t in out.transitions if t.transition in _OPENINGS)
        alerts.append(1 if opened else 0)
        opened_rules.append(opened)
        scores.append(max((r.last_score for r in learned), default=0.0))
    return alerts, scores, opened_rules, invalid


def replay_device(kind: str, tenants: int | None = None, zone_class: str | None = None,
                  max_stay_min: float | None = None, no_parking: bool = False,
                  interval_s: float = 60.0) -> Device:
    return Device(id=REPLAY_DEVICE, kind=kind, tenants=tenants, zone_class=zone_class,
                  max_stay_min=max_stay_min, no_parking=no_parking, interval_s=interval_s)


def replay(input_path: Path, output_path: Path, kind: str | None = None, settings: Settings | None = None,
           device: Device | None = None) -> ReplayStats:
    """Replay `input_path` into `output_path`; returns counts and timing."""
    started = time.perf_counter()
    try:
        with open(input_path, newline="") as handle:
            header, columns = read_columns(handle)
    except OSError as exc:
        raise ReplayError(f"cannot read {input_path}: {exc.strerror}") from None
    stamps = columns[header.index("timestamp")] if "timestamp" in header else []
    invalid = 0
    rules: list[str] | None = None
    if kind is None:
        alerts, scores = replay_generic(header, columns)
    else:
        if kind not in KINDS:
            raise ReplayError(f"unknown kind {kind}")
        alerts, scores, rules, invalid = replay_kind(kind, header, columns, settings or load_settings(None),
                                                     device or replay_device(kind))
    with open(output_path, "w", newline="") as handle:
        write_rows(handle, stamps, alerts, scores, rules)
    return ReplayStats(len(alerts), sum(alerts), invalid, time.perf_counter() - started)


@click.command("replay")
@click.argument("input_path", metavar="INPUT.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write timestamp,is_alert,anomaly_score (and, with --kind, rules).")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Device kind of the rows (default: a generic numeric signal, timestamp,value).")
@click.option("--tenants", type=int, default=None, help="lock: registered tenants.")
@click.option("--zone-class", default=None, help="noise: functional zone class (0, 1, 2, 3, 4a, 4b).")
@click.option("--max-stay-min", type=float, default=None, help="parking: the bay's maximum stay.")
@click.option("--no-parking", is_flag=True, help="parking: the bay is a no-parking bay or fire lane.")
@click.option("--interval", "interval_s", type=float, default=60.0, show_default=True,
              help="The device's expected reporting interval, seconds.")
@click.pass_context
def replay_command(ctx: click.Context, input_path: Path, output_path: Path, kind: str | None,
                   tenants: int | None, zone_class: str | None, max_stay_min: float | None, no_parking: bool,
                   interval_s: float) -> None:
    """Run the detectors over INPUT.csv one row at a time, with no look-ahead."""
    try:
        settings = getattr(ctx.obj, "settings", None) if kind else None
        if kind and settings is None:
            settings = load_settings()
        device = replay_device(kind, tenants, zone_class, max_stay_min, no_parking, interval_s) if kind else None
        stats = replay(input_path, output_path, kind, settings, device)
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    from citywatch.i18n import DEFAULT_LANGUAGE, translator

    try:  # the summary in the configured language (the settings are read only for it without --kind)
        language = (settings or getattr(ctx.obj, "settings", None) or load_settings()).language
    except CitywatchError:
        language = DEFAULT_LANGUAGE
    click.echo(translator(language).gettext(
        "{rows} rows, {alerts} alerts opened, {invalid} invalid rows, {rate} rows/s -> {out}", rows=stats.rows,
        alerts=stats.alerts, invalid=stats.invalid, rate=format(stats.rows_per_s, ",.0f"), out=output_path), err=True)


if __name__ == "__main__":  # pragma: no cover
    replay_command(sys.argv[1:])
