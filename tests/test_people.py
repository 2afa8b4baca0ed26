"""People in the loop without a runner (issue 15): the policy table, account tokens, `citywatch users`,
the audit chain (append-only, tamper-evident, archived across a verifiable boundary), registry changes
audited, and the throttle of failed tokens. Real SQLite files and the real CLI."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from citywatch.cli import main
from citywatch.config import RetentionSettings
from citywatch.people import audit
from citywatch.people.archive import archive_files, archive_old
from citywatch.people.audit import Actor, Entry
from citywatch.people.policy import (
    TABLE,
    Target,
    alert_target,
    authorize,
    incident_target,
    silence_target,
)
from citywatch.people.throttle import Throttle
from citywatch.people.users import BOOTSTRAP, User, UserBook, parse_scope, registry_db
from citywatch.sinks.retention import Retention
from citywatch.sinks.store import AlertStore, store_path

NANHU_OP = User(name="op-nanhu", role="operator", scope={"district": ["Nanhu"]})
GRID_OP = User(name="op-g1", role="operator", scope={"district": ["Nanhu"], "grid": ["G1"]})
CITY_OP = User(name="op-city", role="operator")
FIELD = User(name="li", role="field", scope={"district": ["Nanhu"]}, teams=["grid team 1"])
INSTALLER = User(name="wang", role="installer")
DISPATCH = User(name="dispatch-co", role="dispatch")


def alert(district: str, grid: str, assignee: str | None = None) -> Target:
    return alert_target({"id": f"al_{district}_{grid}", "device": {"district": district, "grid": grid},
                         "assignee": assignee})


IN_NANHU, IN_XIUZHOU = alert("Nanhu", "G1"), alert("Xiuzhou", "G9")
NANHU_G2 = alert("Nanhu", "G2")
ASSIGNED_TEAM = alert("Xiuzhou", "G9", "grid team 1")


@pytest.mark.parametrize(("user", "action", "target", "allowed"), [
    (BOOTSTRAP, "manage_users", None, True),
    (BOOTSTRAP, "ack", IN_XIUZHOU, True),
    (NANHU_OP, "view_alert", IN_NANHU, True),
    (NANHU_OP, "view_alert", IN_XIUZHOU, False),
    (NANHU_OP, "ack", IN_XIUZHOU, False),
    (NANHU_OP, "resolve", IN_NANHU, True),
    (NANHU_OP, "manage_users", None, False),
    (NANHU_OP, "view_kpis", None, False),  # the whole city's figures: outside a district's scope
    (CITY_OP, "view_kpis", None, True),
    (CITY_OP, "ack", IN_XIUZHOU, True),
    (GRID_OP, "ack", NANHU_G2, False),  # every scope key must match
    (GRID_OP, "ack", IN_NANHU, True),
    (FIELD, "ack", IN_NANHU, False),  # in scope, not assigned: may see, not act
    (FIELD, "view_alert", IN_NANHU, True),
    (FIELD, "view_alert", IN_XIUZHOU, False),
    (FIELD, "view_alert", ASSIGNED_TEAM, True),  # out of scope but assigned to their team
    (FIELD, "ack", ASSIGNED_TEAM, True),
    (FIELD, "rectify", alert("Nanhu", "G1", "li"), True),  # assigned to them by name
    (FIELD, "rectify", alert("Nanhu", "G1", "grid team 2"), False),
    (FIELD, "resolve", ASSIGNED_TEAM, False),
    (INSTALLER, "ack", IN_NANHU, False),
    (INSTALLER, "view_alert", IN_NANHU, False),
    (INSTALLER, "manage_devices", Target("device", "gas-1", {"district": ("Nanhu",)}), True),
    (DISPATCH, "assign", IN_XIUZHOU, True),
    (DISPATCH, "ack", IN_XIUZHOU, False),
    (DISPATCH, "silence", None, False),
])
def test_the_policy_table(user: User, action: str, target: Target | None, allowed: bool) -> None:
    decision = authorize(user, action, target)
    assert decision.allowed is allowed, decision.reason
    assert allowed or decision.reason and decision.code


def test_every_role_has_a_column_and_a_disabled_account_may_do_nothing() -> None:
    assert all(len(reaches) == 5 for reaches in TABLE.values())
    gone = User(name="old", role="admin", disabled=True)
    assert not authorize(gone, "view_alert", IN_NANHU)


def test_incidents_and_silences_are_in_scope_only_when_all_they_span_is() -> None:
    member = {"device": {"district": "Nanhu", "grid": "G1"}}
    mixed = incident_target({"id": "inc_1", "members": [member, {"device": {"district": "Xiuzhou"}}]})
    assert authorize(NANHU_OP, "view_incident", incident_target({"id": "inc_2", "members": [member]}))
    assert not authorize(NANHU_OP, "view_incident", mixed)
    assert authorize(NANHU_OP, "silence", silence_target({"district": ["Nanhu"], "kind": ["noise"]}))
    assert not authorize(NANHU_OP, "silence", silence_target({"kind": ["noise"]}))  # the whole city's noise
    assert not authorize(NANHU_OP, "silence", silence_target({"grid": ["G1"]}))  # which district's G1?
    lock = {"id": "lock-1", "district": "Nanhu", "grid": "G1"}
    assert authorize(NANHU_OP, "silence", silence_target({"device": ["lock-1"]}, devices=[lock]))
    assert not authorize(NANHU_OP, "silence", silence_target({"device": ["lock-1", "nope"]}, devices=[lock, None]))


def test_scopes_parse_and_merge() -> None:
    assert parse_scope(["district=Nanhu,grid=G0012", "grid=G0013"]) == {"district": ["Nanhu"],
                                                                        "grid": ["G0012", "G0013"]}
    for bad in ("street=X", "district", "district=", "grid=a\x1bb"):
        with pytest.raises(Exception, match="scope"):
            parse_scope([bad])


# -- accounts and their tokens -------------------------------------------------------------------


def cli(data_dir: Path, *args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env={"CITYWATCH_TOKEN": None}, **kwargs)


def test_users_lifecycle_tokens_shown_once_and_stored_only_hashed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = cli(data, "users", "add", "op-nanhu", "--role", "operator", "--scope", "district=Nanhu")
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("cwt.") and len(token.splitlines()) == 1
    secret = token.split(".")[2]
    raw = b"".join(p.read_bytes() for p in data.glob("registry.db*"))
    assert secret.encode() not in raw and token.encode() not in raw  # only a salted hash is kept
    assert registry_db(data).stat().st_mode & 0o077 == 0

    book = UserBook(registry_db(data))
    try:
        user = book.authenticate(token).user
        assert user is not None and user.name == "op-nanhu" and user.scope == {"district": ["Nanhu"]}
        wrong = book.authenticate(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
        assert wrong.user is None and wrong.named is not None and wrong.named.name == "op-nanhu"
        assert book.authenticate("cwt.0123456789abcdef.nope").user is None
    finally:
        book.close()

    shown = cli(data, "users", "show", "op-nanhu", "--json")
    assert shown.exit_code == 0 and secret not in shown.output and json.loads(shown.stdout)["role"] == "operator"
    assert cli(data, "users", "update", "op-nanhu", "--scope", "district=Nanhu,grid=G1").exit_code == 0
    assert cli(data, "users", "disable", "op-nanhu").exit_code == 0
    book = UserBook(registry_db(data))
    try:
        refused = book.authenticate(token)
        assert refused.user is None and "disabled" in refused.reason
    finally:
        book.close()
    assert cli(data, "users", "enable", "op-nanhu").exit_code == 0
    rotated = cli(data, "users", "rotate", "op-nanhu")
    assert rotated.exit_code == 0
    new = rotated.stdout.strip()
    book = UserBook(registry_db(data))
    try:
        assert book.authenticate(token).user is None  # the old token no longer works
        assert book.authenticate(new).user is not None
    finally:
        book.close()
    listing = cli(data, "users", "list")
    assert "op-nanhu\toperator\tdistrict=Nanhu grid=G1" in listing.stdout
    assert cli(data, "users", "remove", "op-nanhu", "--yes").exit_code == 0
    assert "op-nanhu" not in cli(data, "users", "list").stdout

    for args, message in ((("admin", "--role", "admin", "--scope", "district=Nanhu"), "whole city"),
                          (("bootstrap-admin", "--role", "admin"), "reserved"),
                          (("two words", "--role", "operator"), "no spaces"),
                          (("x", "--role", "operator", "--team", "t1"), "field")):
        failed = cli(data, "users", "add", *args)
        assert failed.exit_code == 1 and message in failed.output, failed.output

    trail = json.loads(cli(data, "audit", "--json").stdout)
    assert [r["action"] for r in trail] == ["user.add", "user.update", "user.disable", "user.enable", "user.rotate",
                                            "user.remove"]
    assert {r["chain"] for r in trail} == {"registry"} and all(r["username"] == "local-admin" for r in trail)
    assert all(r["source"] == "cli" and r["on_behalf_of"] for r in trail)
    assert trail[1]["before"]["scope"] == {"district": ["Nanhu"]}
    assert trail[1]["after"]["scope"] == {"district": ["Nanhu"], "grid": ["G1"]}
    assert all(secret not in json.dumps(r) and "hmac-sha256" not in json.dumps(r) for r in trail)
    assert cli(data, "audit", "verify").exit_code == 0


def test_device_registry_changes_are_audited_and_tampering_is_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add = ["devices", "add", "gas-1", "--kind", "gas", "--district", "Nanhu", "--grid", "G1"]
    assert cli(data, *add).exit_code == 0
    assert cli(data, "devices", "update", "gas-1", "--address", "12 Zhongshan Rd").exit_code == 0
    assert cli(data, "devices", "disable", "gas-1").exit_code == 0
    assert cli(data, "devices", "enable", "gas-1").exit_code == 0
    rotated = cli(data, "devices", "rotate", "gas-1")
    assert rotated.exit_code == 0
    sheet = tmp_path / "street.csv"
    sheet.write_text("id,kind,district,grid\nnoise-1,noise,Nanhu,G1\nnoise-2,noise,Nanhu,G2\n")
    assert cli(data, "devices", "import", str(sheet), "--secrets-out", str(tmp_path / "pw.csv")).exit_code == 0
    assert cli(data, "devices", "remove", "gas-1", "--yes").exit_code == 0

    trail = json.loads(cli(data, "audit", "--target", "device:gas-1", "--json").stdout)
    assert [r["action"] for r in trail] == ["device.add", "device.update", "device.disable", "device.enable",
                                            "device.rotate", "device.remove"]
    assert trail[1]["before"]["address"] == "" and trail[1]["after"]["address"] == "12 Zhongshan Rd"
    assert trail[2]["after"]["enabled"] is False and trail[-1]["after"] is None
    imported = json.loads(cli(data, "audit", "--action", "device.import", "--json").stdout)
    assert [r["target_id"] for r in imported] == ["noise-1", "noise-2"] and "street.csv" in imported[0]["reason"]
    assert "pbkdf2" not in cli(data, "audit", "--json").stdout.lower()  # never a password hash

    ok = cli(data, "audit", "verify")
    assert ok.exit_code == 0 and "registry: ok, 8 records" in ok.output, ok.output
    tamper(registry_db(data), "UPDATE audit SET username = 'someone-else' WHERE seq = 3")
    broken = cli(data, "audit", "verify")
    assert broken.exit_code == 1 and "registry: BROKEN at record #3" in broken.output, broken.output
    assert "was changed" in broken.output


def tamper(path: Path, sql: str) -> None:
    """What someone with the file and sqlite3 could do: drop the guards and edit."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(f"DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; {sql};")
    finally:
        conn.close()


# -- the chain itself ------------------------------------------------------------------------------


def chain(path: Path, n: int, at: float = 1_800_000_000.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    audit.ensure_schema(conn)
    actor = Actor("op-nanhu", "operator", "10.0.0.7", "curl/8", "")
    for i in range(n):
        audit.record(conn, Entry(actor, "ack", "alert", f"al_{i}", {"status": "open"}, {"status": "acknowledged"},
                                 at=at + i))
    return conn


def test_the_trail_is_append_only_and_each_kind_of_tampering_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = chain(path, 5)
    verdict = audit.verify(conn, "state")
    assert verdict.ok and verdict.checked == 5 and verdict.head_seq == 5
    for sql in ("UPDATE audit SET outcome = 'refused' WHERE seq = 2", "DELETE FROM audit WHERE seq = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    with pytest.raises(RuntimeError):  # outside a transaction: it could not be atomic with its change
        audit.append(conn, Entry(Actor("x", "admin", "cli"), "ack"))
    conn.close()

    for sql, seq, words in (("UPDATE audit SET after = '{\"status\":\"resolved\"}' WHERE seq = 4", 4, "was changed"),
                            ("DELETE FROM audit WHERE seq = 2", 2, "missing"),
                            ("UPDATE audit SET hash = '00', prev = '00' WHERE seq = 5", 5, "does not follow")):
        copy = tmp_path / f"copy-{seq}.db"
        copy.write_bytes(path.read_bytes())
        tamper(copy, sql)
        check = sqlite3.connect(copy)
        verdict = audit.verify(check, "state")
        check.close()
        assert not verdict.ok and verdict.broken_seq == seq and words in verdict.problem, verdict


def test_retention_archives_old_records_and_the_chain_verifies_across_the_boundary(tmp_path: Path) -> None:
    data = tmp_path / "data"
    AlertStore(store_path(data)).close()  # a real state.db
    conn = chain(store_path(data), 6, at=1_000_000.0)  # six old records
    audit.record(conn, Entry(Actor("li", "field", "10.0.0.8"), "on_site", "alert", "al_new", at=1_800_000_000.0))
    conn.close()
    report = Retention(RetentionSettings(), data).run_once(1_800_000_000.0)
    assert report.audit_archived == 6 and not report.errors, report
    files = archive_files(data)
    assert [f.name for f in files] == ["audit-1970-01-12.jsonl.gz"] and files[0].stat().st_mode & 0o077 == 0

    conn = sqlite3.connect(store_path(data), isolation_level=None)
    assert conn.execute("SELECT MIN(seq), COUNT(*) FROM audit").fetchone() == (7, 1)
    audit.record(conn, Entry(Actor("li", "field", "10.0.0.8"), "rectify", "alert", "al_new", at=1_800_000_001.0))
    verdict = audit.verify(conn, "state", files)
    assert verdict.ok and verdict.archived == 6 and verdict.checked == 8 and verdict.head_seq == 8, verdict
    assert audit.verify(conn, "state").note  # without the files: the rest checked, the gap said

    original = files[0].read_bytes()
    lines = [json.loads(line) for line in gzip.decompress(original).splitlines()]
    edited = [dict(r, username="someone-else") if r["seq"] == 3 else r for r in lines]
    files[0].write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in edited)))
    verdict = audit.verify(conn, "state", files)
    assert not verdict.ok and verdict.broken_seq == 3 and "archive" in verdict.problem
    files[0].write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in lines[:4])))
    verdict = audit.verify(conn, "state", files)  # a file cut short: the table no longer follows it
    assert not verdict.ok and "missing or was changed" in verdict.problem
    conn.close()
    assert archive_old(sqlite3.connect(store_path(data), isolation_level=None), data, 1_800_000_000.0, 100) == 0


def test_the_cli_acting_directly_is_the_local_admin_for_the_os_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = cli(data, "silences", "add", "--district", "Nanhu", "--for", "2h", "--reason", "road works", "--by", "zhao")
    assert added.exit_code == 0, added.output
    (record,) = json.loads(cli(data, "audit", "--json").stdout)
    assert record["chain"] == "state" and record["username"] == "local-admin" and record["role"] == "admin"
    assert record["on_behalf_of"] == "zhao" and record["source"] == "cli" and record["action"] == "silence"
    assert record["after"]["matchers"] == {"district": ["Nanhu"]} and record["target_id"] == record["after"]["id"]


# -- throttling failed tokens ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_tokens_block_an_address_for_a_growing_time_in_bounded_memory() -> None:
    clock = FakeClock()
    throttle = Throttle(failures=5, window_s=60, block_s=10, block_max_s=25, addresses=16, clock=clock)
    for _ in range(4):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None  # four: still answered
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 10 and throttle.retry_after("10.0.0.2") is None
    clock.now += 10.5
    assert throttle.retry_after("10.0.0.1") is None
    for _ in range(5):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 20  # the second block: twice as long
    clock.now += 21
    for _ in range(5):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 25  # capped at block_max_s
    clock.now += 25 + 61  # quiet for a window after the block: starts over
    for _ in range(5):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 10
    clock.now += 11
    for _ in range(5):  # failures spread wider than the window never block
        throttle.failed("10.0.0.3")
        clock.now += 15
    assert throttle.retry_after("10.0.0.3") is None
    for i in range(100):
        throttle.failed(f"10.1.0.{i}")
    assert throttle.stats()["addresses"] == 16
