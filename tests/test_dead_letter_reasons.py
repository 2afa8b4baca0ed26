"""Dead-letter reasons are one typed list (citywatch.errors.DEAD_LETTER_REASONS): the README's list, the
translated labels and every raise in the code agree with it; and each dead letter keeps the payload
field at fault, through the store and in files written before the field existed."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

from citywatch.errors import DEAD_LETTER_REASONS
from citywatch.labels import codes
from citywatch.model import Device, Output
from citywatch.sinks.store import SCHEMA_VERSION, AlertStore, connect, store_path
from tests.helpers import T0, make_pipeline, payload

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_lists_exactly_the_reasons() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("Reasons (one typed list, `citywatch.errors.DeadLetterReason`):")
    paragraph = text[start:text.index("\n\n", start)]
    listed = re.findall(r"`([a-z_]+)`", paragraph.split("):", 1)[1])
    assert listed == list(DEAD_LETTER_REASONS)


def test_every_reason_has_a_label_and_no_label_is_stale() -> None:
    assert codes("dead letter reason") == set(DEAD_LETTER_REASONS)


def test_every_reason_raised_in_the_code_is_in_the_list() -> None:
    raised: set[str] = set()
    for path in (ROOT / "citywatch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "InvalidMessage", "_dead_letter") and node.args:
                first = node.args[0] if getattr(node.func, "id", "") == "InvalidMessage" else node.args[2]
                if isinstance(first, ast.Constant):
                    raised.add(first.value)
    assert raised, "the scan found no raise: it is broken"
    assert raised <= set(DEAD_LETTER_REASONS), raised - set(DEAD_LETTER_REASONS)


@pytest.mark.parametrize(("body", "reason", "field"), [
    ({"ts": T0, "lel_pct": "high"}, "wrong_type", "lel_pct"),
    ({"ts": T0, "lel_pct": 900}, "out_of_range", "lel_pct"),
    ({"ts": T0}, "missing_field", "lel_pct"),
    ({"ts": T0 + 3600, "lel_pct": 1}, "future_timestamp", "ts"),
    ({"ts": T0, "lel_pct": 1, "kind": "water"}, "topic_mismatch", "kind"),
])
def test_a_dead_letter_keeps_the_field_at_fault_through_the_store(tmp_path: Path, body: dict[str, object],
                                                                   reason: str, field: str) -> None:
    device = Device(id="gas-1", kind="gas")
    pipeline = make_pipeline(device)
    out = Output()
    pipeline.process("citywatch/gas/gas-1/telemetry", payload(**body), T0, out)  # type: ignore[arg-type]
    assert [(d.reason, d.field) for d in out.dead_letters] == [(reason, field)]
    store = AlertStore(store_path(tmp_path))
    store.commit(out, [], {})
    assert [(d.reason, d.field) for d in store.dead_letters()] == [(reason, field)]
    store.close()


def test_malformed_json_has_no_field() -> None:
    pipeline = make_pipeline(Device(id="gas-1", kind="gas"))
    out = Output()
    pipeline.process("citywatch/gas/gas-1/telemetry", b"{not json", T0, out)
    assert [(d.reason, d.field) for d in out.dead_letters] == [("malformed_json", None)]


def test_a_store_written_before_the_field_existed_gains_it(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
            payload BLOB NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
            received_at REAL NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO dead_letters (topic, payload, size, reason, detail, received_at)
            VALUES ('citywatch/gas/gas-1/telemetry', X'7B', 1, 'malformed_json', 'bad', 1.0);
        INSERT INTO counters VALUES ('dead_letter.malformed_json', 1);  -- version 2 kept counters
        PRAGMA user_version=2;
    """)
    old.commit()
    old.close()
    connect(path).close()
    store = AlertStore(store_path(tmp_path))
    assert [(d.reason, d.field) for d in store.dead_letters()] == [("malformed_json", None)]
    out = Output()
    make_pipeline(Device(id="gas-1", kind="gas")).process(
        "citywatch/gas/gas-1/telemetry", payload(T0, lel_pct="x"), T0, out)
    store.commit(out, [], {})
    assert [(d.reason, d.field) for d in store.dead_letters()][0] == ("wrong_type", "lel_pct")
    assert store.dead_letter_counts() == {"malformed_json": 1, "wrong_type": 1}
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
