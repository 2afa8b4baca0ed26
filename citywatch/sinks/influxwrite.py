"""One write to InfluxDB's v2 API, and when it refuses a batch, finding the lines it refuses.

InfluxDB 2.x refuses a whole batch for one bad line (1.x writes the rest and still answers 400),
so one reading with an impossible value or time must not send 5,000 good lines aside. On a
refusal (400, 413, 422: a 4xx that is about the data, not our credentials or the server's mood)
the batch is split: lines the server's message names (`line N:` of 2.x, `unable to parse '<line>'`
of 1.x) are set aside at once and the rest sent again; otherwise halves are sent, and a refused
half split again, down to single lines. Points are idempotent (same series and time overwrite),
so lines written twice by a partial write and a resend are stored once. At most
ISOLATE_MAX_REQUESTS requests per batch: past that, what is not isolated yet is set aside whole
(nothing is lost: `citywatch influx replay-rejected` sends it again, isolating afresh).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from citywatch.config import InfluxSettings
from citywatch.sinks.lineprotocol import MAX_NS, MIN_NS

OK, REJECT, RETRY = "ok", "reject", "retry"
RETRY_STATUSES = frozenset({401, 403, 404, 408, 429})  # 401/403/404: our config, not the data
ISOLATE_MAX_REQUESTS = 64  # one bad line in 5,000 takes about 26
REASON_LIMIT = 300

_LINE_NO = re.compile(r"\bline (\d+): ?([^\n]*)")  # 2.x: "errors encountered on line(s):\nline 3: ..."
_QUOTED = re.compile(r"unable to parse '(.*?)': ([^\n]*)")  # 1.x (and 2.x's older parser)
_DROPPED = re.compile(r"\s*dropped=\d+\s*$")


class Posted(NamedTuple):
    outcome: str  # ok | reject | retry
    reason: str  # short, without the token
    retry_after: float | None = None
    message: str = ""  # the server's whole error message: it may name the bad lines


class Written(NamedTuple):
    outcome: str  # ok (every line written or set aside) | retry (try the whole batch again later)
    written: int  # lines InfluxDB took
    rejected: list[tuple[bytes, str]]  # lines it refuses (without the newline), each with why
    reason: str = ""
    retry_after: float | None = None


def in_range(line: bytes) -> bool:
    """False if the line's timestamp is outside what InfluxDB can store; a line without one is fine."""
    ts = line.rstrip().rpartition(b" ")[2]
    try:
        t = int(ts)
    except ValueError:
        return True
    return MIN_NS <= t <= MAX_NS


def error_message(body: object) -> str:
    """The text of an InfluxDB error body: `message` (2.x) or `error` (1.x) of its JSON, else as is."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return text


def suspects(message: str, lines: list[bytes]) -> dict[int, str]:
    """Indexes of `lines` the server's message names as bad, with the reason it gives for each."""
    found: dict[int, str] = {}
    for number, why in _LINE_NO.findall(message):
        index = int(number) - 1
        if 0 <= index < len(lines):
            found[index] = why.strip()
    quoted = _QUOTED.findall(message)
    if quoted:
        where = {line.decode("utf-8", "replace"): i for i, line in enumerate(lines)}
        for text, why in quoted:
            if text in where:
                found[where[text]] = _DROPPED.sub("", why).strip()
    return found


class InfluxWriter:
    """Synchronous writes to one InfluxDB (one thread at a time)."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self._token = settings.token.get_secret_value() if settings.token is not None else ""
        self._client = InfluxDBClient(url=settings.url or "", token=self._token, org=settings.org,
                                      timeout=settings.timeout_ms)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token and len(self._token) >= 4 else text

    def post(self, data: bytes) -> Posted:
        """One request; what came of it, the reason without the token."""
        try:
            self._write_api.write(bucket=self.settings.bucket, org=self.settings.org, record=data,
                                  write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as exc:
            status = exc.status or 0
            message = self.scrub(error_message(exc.body) or str(exc.reason))
            reason = f"HTTP {status}: {message[:REASON_LIMIT]}"
            if 400 <= status < 500 and status not in RETRY_STATUSES:
                return Posted(REJECT, reason, None, message)
            return Posted(RETRY, reason, _seconds(exc.retry_after))
        except Exception as exc:  # refused, reset, timed out: the server may or may not have it
            return Posted(RETRY, self.scrub(f"{type(exc).__name__}: {exc}"[:REASON_LIMIT]))
        return Posted(OK, "")

    def write(self, data: bytes) -> Written:
        """Write a batch (lines ending in newlines); a refused one is isolated down to its bad lines."""
        first = self.post(data)
        if first.outcome == OK:
            return Written(OK, data.count(b"\n"), [])
        if first.outcome == RETRY:
            return Written(RETRY, 0, [], first.reason, first.retry_after)
        return self._isolate(data.splitlines(), first)

    def _isolate(self, lines: list[bytes], first: Posted) -> Written:
        written, bad, budget = 0, [], ISOLATE_MAX_REQUESTS
        todo = [(lines, first)]  # chunks the server refused, with its answer
        while todo:
            chunk, answer = todo.pop()
            if len(chunk) == 1:
                bad.append((chunk[0], answer.reason))
                continue
            if budget <= 0:
                bad += [(line, f"{answer.reason} (batch not isolated further)") for line in chunk]
                continue
            named = suspects(answer.message, chunk)
            if named:  # matched exactly (by number or by text): trust it, resend the rest
                status = answer.reason.partition(":")[0]
                bad += [(chunk[i], f"{status}: {why}"[:REASON_LIMIT]) for i, why in sorted(named.items())]
                rest = [line for i, line in enumerate(chunk) if i not in named]
                parts = [rest] if rest else []
            else:
                parts = [chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]]
            for part in parts:
                budget -= 1
                result = self.post(b"\n".join(part) + b"\n")
                if result.outcome == RETRY:  # the server went away meanwhile: the whole batch later
                    return Written(RETRY, 0, [], result.reason, result.retry_after)
                if result.outcome == OK:
                    written += len(part)
                else:
                    todo.append((part, result))
        return Written(OK, written, bad, first.reason)


def _seconds(value: object) -> float | None:
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
