"""Replay a CSV through the detectors, one row at a time, with no look-ahead.

Input: a header row, then `timestamp,value` (a generic numeric signal: the generic detector) or,
with a kind, `timestamp` and the kind's payload fields as it declares them in citywatch/kinds/<kind>.py
(gas: lel_pct[,co_ppm]; noise: laeq_db[,lamax_db]; water: depth_cm; parking: occupied; lock:
event[,user]; smoke: obscuration_pct_per_m,alarm[,event]; `citywatch schema` lists them) plus
optionally battery, rssi, seq. Yes/no fields read 1/0, true/false, yes/no. A kind's rows run
through the real pipeline core (validation, threshold rules, learned detectors, alert lifecycle) as
one synthetic device. Timestamps: epoch
seconds (or milliseconds), or ISO 8601 (without an offset: UTC).

Output: one row per input row, `timestamp,is_alert,anomaly_score` and, with a kind, `rules`.
is_alert is 1 on the row where an alert opens (for a kind: any rule's alert opened by that row,
flapping openings included) and 0 while it stays open; `rules` names the rules whose alerts that
row opened (`;`-separated, empty otherwise); anomaly_score is in [0, 1], higher for more anomalous
(for a kind: the highest learned detector's score, 0.5 at its alert threshold). A kind's row that
fails validation scores 0. Silence (offline) and deadlines need a clock and are not replayed.

Memory stays bounded whatever the file's size: rows are read, replayed and written a chunk
(CHUNK_ROWS) at a time; within a chunk the cells are parsed column-wise (float(); numpy for ISO timestamps),
the detectors still see one row at a time. A file output is written beside its target and renamed
at the end, so a replay that fails half-way (a bad timestamp on row 700,000) leaves no half file;
`-` writes to stdout as it goes.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from citywatch.detectors.generic import GenericDetector
from citywatch.errors import CitywatchError
from citywatch.kinds import KINDS

if TYPE_CHECKING:  # the generic replay (no --kind) imports none of these, nor numpy: tests/test_cli_imports.py
    from citywatch.config import Settings
    from citywatch.model import Device

REPLAY_DEVICE = "replay"
CHUNK_ROWS = 8192  # rows held at once: bounds memory, keeps the column-wise parsing
_COMMON = ("battery", "rssi", "seq")
_TRUE = {"1", "true", "yes", "y", "t", "occupied"}


class ReplayError(CitywatchError):
    """A CSV replay cannot start (bad header, unknown column, unreadable file)."""


class ReplayStats:
    """What a replay did (a plain class: dataclasses is not otherwise imported on this path)."""

    def __init__(self) -> None:
        self.rows = 0
        self.alerts = 0
        self.invalid = 0
        self.seconds = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


# -- parsing ------------------------------------------------------------------------------------


def parse_timestamps(raw: Sequence[str], first_row: int = 2) -> list[float]:
    """Epoch seconds of each timestamp string: numbers (ms when > 1e11) or ISO 8601.
    `first_row` is the file's row number of raw[0] (for the error message). Numbers are parsed by
    float() (as fast as numpy for them, without numpy's 0.15 s import); ISO text by numpy, imported then,
    unless this is a file's only chunk and numpy is not imported yet: 5,000 rows cost about 10 ms by
    datetime, less than numpy's import (times finer than a millisecond are then kept, numpy drops them)."""
    try:
        return [t / 1000.0 if t > 1e11 else t for t in map(float, raw)]
    except ValueError:
        pass
    tried = len(raw) >= CHUNK_ROWS or "numpy" in sys.modules
    if tried:
        numpy_parsed = _iso_by_numpy(raw)
        if numpy_parsed is not None:
            return numpy_parsed
    out = [0.0] * len(raw)
    for i, s in enumerate(raw):
        try:
            value = float(s)
            out[i] = value / 1000.0 if value > 1e11 else value
            continue
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(s.strip())
        except ValueError:
            numpy_parsed = None if tried else _iso_by_numpy(raw)  # forms only numpy reads (a month: 2026-11)
            if numpy_parsed is not None:
                return numpy_parsed
            raise ReplayError(f"row {i + first_row}: bad timestamp {s!r}") from None
        out[i] = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return out


def _iso_by_numpy(raw: Sequence[str]) -> list[float] | None:
    """ISO 8601 text to epoch seconds by numpy (15 times faster than datetime per row, once
    imported), or None where numpy would not read it the same (an offset: those go row by row)."""
    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about offsets
            # a trailing Z is UTC, as a time without an offset is here: numpy only warns about it
            stamps = np.asarray([s.strip().replace(" ", "T", 1).removesuffix("Z") for s in raw], dtype="datetime64[ms]")
        return (stamps.astype(np.int64) / 1000.0).tolist()  # type: ignore[no-any-return]
    except (ValueError, UserWarning, DeprecationWarning):
        return None


def parse_numbers(raw: Sequence[str]) -> list[float]:
    """A float per string; empty or unparsable ones become NaN."""
    try:
        return list(map(float, raw))
    except ValueError:
        out = [0.0] * len(raw)
        for i, s in enumerate(raw):
            try:
                out[i] = float(s)
            except ValueError:
                out[i] = math.nan
        return out


def read_header(reader: Iterator[list[str]]) -> list[str]:
    try:
        return [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ReplayError("empty input: a header row is needed") from None


def read_chunks(reader: Iterator[list[str]], width: int, rows: int = CHUNK_ROWS) -> Iterator[list[list[str]]]:
    """The rows after the header as columns, up to `rows` rows at a time (empty rows skipped, short
    rows padded with empty cells, cells beyond `width` ignored). Transposed by zip() in C: a Python
    loop appending each cell cost 4 us a row, a fifth of a 5,000-row replay's time."""
    while True:
        block = list(islice(reader, rows))
        if not block:
            return
        if min(map(len, block)) < width:  # rare: empty or short rows
            block = [row if len(row) >= width else row + [""] * (width - len(row)) for row in block if row]
            if not block:
                continue
        yield [list(column) for column in islice(zip(*block, strict=False), width)]


# -- the generic signal -------------------------------------------------------------------------


class GenericReplay:
    """`timestamp,value` rows through the generic detector (its state carries across chunks)."""

    def __init__(self, header: list[str]) -> None:
        if "timestamp" not in header:
            raise ReplayError("the header needs a timestamp column")
        if "value" in header:
            self.value_col = header.index("value")
        elif len(header) == 2:
            self.value_col = 1 - header.index("timestamp")
        else:
            raise ReplayError("the header needs a value column (or give --kind)")
        self.ts_col = header.index("timestamp")
        self.detector = GenericDetector()
        self.invalid = 0

    def run(self, columns: list[list[str]], first_row: int) -> tuple[list[int], list[float], list[str] | None]:
        ts = parse_timestamps(columns[self.ts_col], first_row)
        values = parse_numbers(columns[self.value_col])
        alerts, scores = self.detector.run(values, ts)  # the loop compiled with the detector
        return alerts, scores, None


# -- a device kind ------------------------------------------------------------------------------

_OPENINGS = ("opened", "flapping")


class KindReplay:
    """A kind's rows through the real pipeline core, as one synthetic device."""

    def __init__(self, kind: str, header: list[str], settings: Settings, device: Device) -> None:
        import msgspec

        from citywatch.detectors.lifecycle import AlertEngine
        from citywatch.ingest.topics import telemetry_topic
        from citywatch.kinds import spec
        from citywatch.streams.pipeline import Pipeline

        declared = spec(kind)
        fields = declared.fields
        self.booleans = frozenset(f.name for f in declared.payload if f.type is bool)  # 1/0, true/false, yes/no
        self.texts = frozenset(f.name for f in declared.payload if f.type not in (bool, float, int))
        if "timestamp" not in header:
            raise ReplayError("the header needs a timestamp column")
        unknown = [h for h in header if h != "timestamp" and h not in fields and h not in _COMMON]
        if unknown:
            raise ReplayError(f"unknown columns for kind {kind}: {', '.join(unknown)} "
                              f"(expected {', '.join(fields + _COMMON)})")
        if fields[0] not in header:
            raise ReplayError(f"kind {kind} needs a {fields[0]} column")
        self.header = header
        self.pipeline = Pipeline(settings, {device.id: device}, AlertEngine(settings.alerts))
        self.topic = telemetry_topic(kind, device.id, settings.mqtt.topic_prefix)
        self.encode = msgspec.json.Encoder().encode
        self.invalid = 0

    def _payloads(self, columns: list[list[str]], first_row: int) -> Iterator[dict[str, Any]]:
        ts = parse_timestamps(columns[self.header.index("timestamp")], first_row)
        numeric: dict[str, list[float]] = {}
        text: dict[str, list[str]] = {}
        for name, column in zip(self.header, columns, strict=True):
            if name == "timestamp":
                continue
            if name in self.texts:
                text[name] = [c.strip() for c in column]
            elif name in self.booleans:
                numeric[name] = [1.0 if c.strip().lower() in _TRUE else 0.0 if c.strip() else math.nan
                                 for c in column]
            else:
                numeric[name] = parse_numbers(column)
        for i, t in enumerate(ts):
            payload: dict[str, Any] = {"ts": t}
            for name, values in numeric.items():
                v = values[i]
                if v == v:  # not NaN: an empty cell is a missing field
                    payload[name] = bool(v) if name in self.booleans else int(v) if name == "seq" else v
            for name, cells in text.items():
                if cells[i]:
                    payload[name] = cells[i]
            yield payload

    def run(self, columns: list[list[str]], first_row: int) -> tuple[list[int], list[float], list[str] | None]:
        from citywatch.model import Output

        alerts: list[int] = []
        scores: list[float] = []
        opened_rules: list[str] = []
        for payload in self._payloads(columns, first_row):
            out = Output()
            score = self.pipeline.process(self.topic, self.encode(payload), payload["ts"], out)
            if out.dead_letters:
                self.invalid += 1
            opened = ";".join(t.alert.rule for t in out.transitions if t.transition in _OPENINGS)
            alerts.append(1 if opened else 0)
            opened_rules.append(opened)
            scores.append(score)
        return alerts, scores, opened_rules


def replay_device(kind: str, tenants: int | None = None, zone_class: str | None = None,
                  max_stay_min: float | None = None, no_parking: bool = False,
                  interval_s: float = 60.0) -> Device:
    from citywatch.model import Device

    return Device(id=REPLAY_DEVICE, kind=kind, tenants=tenants, zone_class=zone_class,
                  max_stay_min=max_stay_min, no_parking=no_parking, interval_s=interval_s)


# -- files --------------------------------------------------------------------------------------


_ROW = "{},{},{:.6f}\n"  # a generic row: timestamp cell as read, is_alert, anomaly_score


def _needs_quoting(cells: list[str]) -> bool:
    """Whether csv.writer would quote any of `cells` (a delimiter, a quote or a line break in it)."""
    text = "".join(cells)
    return "," in text or '"' in text or "\n" in text or "\r" in text


@contextmanager
def _output(path: Path) -> Iterator[TextIO]:
    """stdout for `-`; else a temporary file beside `path`, renamed onto it only when all is written."""
    if str(path) == "-":
        stream = click.get_text_stream("stdout")
        yield stream
        stream.flush()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReplayError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replay(input_path: Path, output_path: Path, kind: str | None = None, settings: Settings | None = None,
           device: Device | None = None, on_progress: Callable[[int, int], None] | None = None) -> ReplayStats:
    """Replay `input_path` into `output_path` (`-`: stdout), a chunk at a time; returns counts and
    timing. `on_progress(bytes_read, bytes_total)` is called after each chunk."""
    started = time.perf_counter()
    stats = ReplayStats()
    try:
        raw = open(input_path, "rb")  # noqa: SIM115 (closed below; the error message is ours)
        total = os.fstat(raw.fileno()).st_size
    except OSError as exc:
        raise ReplayError(f"cannot read {input_path}: {exc.strerror}") from None
    try:
        # raw.tell(): how far the reading is; utf-8-sig: a spreadsheet's BOM is fine
        with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as source:
            reader = csv.reader(source)
            header = read_header(reader)
            replayer: GenericReplay | KindReplay
            if kind is None:
                replayer = GenericReplay(header)
            else:
                if kind not in KINDS:
                    raise ReplayError(f"unknown kind {kind}")
                if settings is None:
                    from citywatch.config import load_settings

                    settings = load_settings(None)
                replayer = KindReplay(kind, header, settings, device or replay_device(kind))
            ts_col = header.index("timestamp")
            with _output(output_path) as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(("timestamp", "is_alert", "anomaly_score") + (("rules",) if kind else ()))
                for columns in read_chunks(reader, len(header)):
                    alerts, scores, rules = replayer.run(columns, stats.rows + 2)
                    stamps = columns[ts_col]
                    if rules is None and not _needs_quoting(stamps):  # as csv.writer writes them, 3x faster
                        handle.write("".join(map(_ROW.format, stamps, alerts, scores)))
                    elif rules is None:
                        writer.writerows(zip(stamps, alerts, (f"{s:.6f}" for s in scores), strict=True))
                    else:
                        writer.writerows(zip(stamps, alerts, (f"{s:.6f}" for s in scores), rules, strict=True))
                    stats.rows += len(alerts)
                    stats.alerts += sum(alerts)
                    if on_progress is not None:
                        on_progress(raw.tell(), total)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ReplayError(f"{input_path}: not UTF-8 (byte 0x{byte:02x}); save it as CSV UTF-8") from None
    stats.invalid = replayer.invalid
    stats.seconds = time.perf_counter() - started
    return stats


@click.command("replay")
@click.argument("input_path", metavar="INPUT.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Where to write timestamp,is_alert,anomaly_score (and, with --kind, rules); - for stdout.")
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
    from citywatch import progress
    from citywatch.cli_context import Context, configured_language
    from citywatch.i18n import translator

    obj = ctx.obj if isinstance(ctx.obj, Context) else None
    try:
        settings = (obj.settings if obj else None) if kind else None
        if kind and settings is None:
            from citywatch.config import load_settings

            settings = load_settings()
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    # messages in the configured language: without --kind only that key is read, not the whole settings
    t = translator(settings.language if settings else obj.language if obj else configured_language())
    try:
        device = replay_device(kind, tenants, zone_class, max_stay_min, no_parking, interval_s) if kind else None
        to_stdout = str(output_path) == "-"
        # a bar on stderr, unless the rows themselves go to that same terminal
        with progress.bar(t.gettext("replaying {file}", file=input_path.name), total=input_path.stat().st_size,
                          unit="bytes", show=not (to_stdout and progress.enabled(sys.stdout))) as bar:
            stats = replay(input_path, output_path, kind, settings, device,
                           on_progress=lambda done, total: bar.update(done, total))
    except CitywatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(t.gettext(
        "{rows} rows, {alerts} alerts opened, {invalid} invalid rows, {rate} rows/s -> {out}", rows=stats.rows,
        alerts=stats.alerts, invalid=stats.invalid, rate=format(stats.rows_per_s, ",.0f"), out=output_path), err=True)


if __name__ == "__main__":  # pragma: no cover
    replay_command(sys.argv[1:])
