"""People's actions on alerts (acknowledge, resolve) from the CLI.

When `citywatch run` is up, the action goes through its HTTP API so the running engine stays
the single owner of alert state. When it is not, the action is applied to the store directly
(and its webhook waits in the outbox for the next run).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from citywatch.api import api_token
from citywatch.config import Settings
from citywatch.detectors.lifecycle import AlertEngine
from citywatch.errors import AlertError
from citywatch.sinks.store import AlertStore, store_path
from citywatch.sinks.webhooks import Outbox
from citywatch.streams.pipeline import Output


def act(settings: Settings, alert_id: str, action: str, by: str) -> dict[str, Any]:
    """Acknowledge or resolve; returns the transition as a dict. Raises AlertError."""
    if action not in ("ack", "resolve"):
        raise ValueError(action)
    via_api = _via_api(settings, alert_id, action, by)
    if via_api is not None:
        return via_api
    return _direct(settings, alert_id, action, by)


def _via_api(settings: Settings, alert_id: str, action: str, by: str) -> dict[str, Any] | None:
    if not settings.api.enabled:
        return None
    token = api_token(settings.api, settings.data_dir, create=False)
    if token is None:
        return None
    url = f"http://{settings.api.host}:{settings.api.port}/alerts/{alert_id}/{action}"
    request = urllib.request.Request(url, data=json.dumps({"by": by}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        raise AlertError(json.loads(exc.read() or b"{}").get("error", str(exc))) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None  # not running: act on the store


def _direct(settings: Settings, alert_id: str, action: str, by: str) -> dict[str, Any]:
    store = AlertStore(store_path(settings.data_dir), hooks=[Outbox(settings.webhooks).enqueue])
    try:
        engine = AlertEngine(settings.alerts, store.open_alerts())
        now = time.time()
        transition = engine.acknowledge(alert_id, by, now) if action == "ack" else engine.resolve(alert_id, by, now)
        out = Output()
        out.transitions.append(transition)
        store.commit(out, engine.take_dirty(), {})
    finally:
        store.close()
    return {"id": transition.id, "alert_id": transition.alert_id, "transition": transition.transition}
