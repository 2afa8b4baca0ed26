"""People's actions on alerts from the CLI: acknowledge, resolve, and the dispatch actions (assign,
on-site, rectify, reject, close).

One owner per data dir: when `citywatch run` holds the data dir's lock, the action goes through
its HTTP API (at the address it recorded in the lock file), so the running engine stays the
single owner of alert state. If that API is disabled or unreachable the action is refused: it is
never written to the store behind the runner's back (the runner would overwrite it). Only when no
runner holds the lock is the action applied to the store directly, holding the lock meanwhile
(its webhook then waits in the outbox for the next run).

Who: through the API, the account of the token presented (people/client.py: --token,
$CITYWATCH_TOKEN, else the bootstrap admin's); directly, the local admin acting for `by` (whoever
can write the data dir's files is an admin already). Both are audited (people/audit.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from citywatch.config import Settings
from citywatch.datalock import DataDirBusy, DataDirLock
from citywatch.detectors.lifecycle import AlertEngine, AlertNotFound
from citywatch.errors import AlertError
from citywatch.loop.dispatch import Refused, parse_detail
from citywatch.model import Output
from citywatch.people import audit
from citywatch.people.client import cli_token, refusal
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import Outbox

RUNNER = "citywatch run"
API_TIMEOUT_S = 10.0


# The CLI's (and the API path's) names of the dispatch actions -> model.DISPATCH_ACTIONS
DISPATCH = {"assign": "assigned", "on-site": "on_site", "rectify": "rectified", "reject": "rejected",
            "close": "closed"}
ACTIONS = ("ack", "resolve", *DISPATCH)


def act(settings: Settings, alert_id: str, action: str, by: str, **detail: Any) -> dict[str, Any]:
    """Acknowledge, resolve or a dispatch action (`detail`: assignee, note, evidence, reason); returns
    the transition as a dict. Raises AlertError."""
    if action not in ACTIONS:
        raise ValueError(action)
    if action in DISPATCH:  # the API's own checks, also when applied directly
        try:
            checked = parse_detail(DISPATCH[action], json.dumps({**detail, "by": by}).encode())
        except Refused as exc:
            raise AlertError(str(exc)) from None
        detail = {"assignee": checked.assignee, "note": checked.note, "evidence": checked.evidence,
                  "reason": checked.reason}
        by = checked.by
    lock = DataDirLock(settings.data_dir, f"citywatch alerts {action}")
    try:
        lock.acquire()
    except DataDirBusy as busy:
        return _via_owner(settings, busy.holder, alert_id, action, by, detail)
    try:
        return _direct(settings, alert_id, action, by, detail)
    finally:
        lock.release()


def _api_url(address: str) -> str:
    """http://host:port for the address a runner recorded; a wildcard bind is reached on loopback."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _via_owner(settings: Settings, holder: dict[str, Any], alert_id: str, action: str,
               by: str, detail: dict[str, Any]) -> dict[str, Any]:
    data_dir = settings.data_dir
    pid = holder.get("pid", "?")
    command = holder.get("command") or "another citywatch process"
    refuse = "the store is not written behind its back"
    if command != RUNNER:
        raise AlertError(f"{data_dir} is busy ({command}, pid {pid}); try again in a moment")
    if not holder.get("api"):
        raise AlertError(f"{RUNNER} (pid {pid}) owns {data_dir} but serves no API (api.enabled: false, or still "
                         f"starting), so the {action} cannot go through it and {refuse}: enable its API or "
                         "stop it, then try again")
    base = _api_url(str(holder["api"]))
    token = cli_token(settings)  # --token, $CITYWATCH_TOKEN, else the bootstrap admin's
    if token is None:
        raise AlertError(f"no API token to reach {RUNNER} (pid {pid}) at {base}: set api.token or api.token_file "
                         f"as the runner has it ({data_dir}/api-token is missing)")
    url = f"{base}/alerts/{urllib.parse.quote(alert_id, safe='')}/{action}"
    request = urllib.request.Request(url, data=json.dumps({**detail, "by": by}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        raise AlertError(_http_error(exc)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):  # sent, unanswered: the owner may still apply it
            raise AlertError(f"{RUNNER} (pid {pid}) owns {data_dir} but its API at {base} did not answer within "
                             f"{API_TIMEOUT_S:g} s; the {action} may still be applied when it does (see "
                             f"`citywatch alerts list`); {refuse}") from None
        raise AlertError(f"{RUNNER} (pid {pid}) owns {data_dir} but its API at {base} does not answer "
                         f"({reason}); {refuse}: try again, or stop the runner first") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    message = body.get("error") if isinstance(body, dict) else None
    if exc.code in (401, 403, 429):
        return refusal(exc.code, str(message) if message else None)
    return str(message) if message else f"the running API answered {exc.code} {exc.reason}"


def _state(alert: Any) -> dict[str, Any]:
    from citywatch.people.api import alert_state

    return alert_state(alert)


def _direct(settings: Settings, alert_id: str, action: str, by: str, detail: dict[str, Any]) -> dict[str, Any]:
    path = store_path(settings.data_dir)
    try:
        outbox = Outbox(settings.webhooks, levels=settings.alerts.escalation.levels,
                        safety_rules=settings.alerts.safety_rules)  # level routes, silences
        store = AlertStore(path, hooks=[outbox.enqueue])
        try:
            engine = AlertEngine(settings.alerts, store.open_alerts())
            now = time.time()
            audit.ensure_schema(store.conn)  # the local admin acts for `by` (the OS user by default): audited
            current = engine.by_id.get(alert_id)
            entry = audit.Entry(audit.Actor.cli(by), action.replace("-", "_"), "alert", alert_id,
                                None if current is None else _state(current), at=now)
            try:
                try:
                    if action in DISPATCH:
                        transition = engine.dispatch(alert_id, DISPATCH[action], by, now, **detail)
                    else:
                        transition = (engine.acknowledge(alert_id, by, now) if action == "ack"
                                      else engine.resolve(alert_id, by, now))
                except AlertNotFound:
                    known = store.conn.execute("SELECT status FROM alerts WHERE id = ?", (alert_id,)).fetchone()
                    raise AlertError(f"no open alert {alert_id}: it is already {known[0]}" if known
                                     else f"no alert {alert_id}") from None
            except AlertError as exc:
                audit.record(store.conn, audit.Entry(entry.actor, entry.action, "alert", alert_id, entry.before,
                                                     outcome="error", reason=str(exc), at=now))
                raise
            out = Output()
            out.transitions.append(transition)
            store.hooks.append(audit.hook(entry, lambda out: _state(out.transitions[-1].alert)))
            store.commit(out, engine.take_dirty(), {})
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise AlertError(f"cannot {action} {alert_id}: {path.name} ({path}): {exc}") from None
    return {"id": transition.id, "alert_id": transition.alert_id, "transition": transition.transition,
            "status": transition.alert.status}
