"""Upload the dashboards to a running Grafana with grafana-client (3.x: requests-based).

The datasource comes from provisioning (deploy/grafana/provisioning/datasources); this only puts
the dashboards into a folder, overwriting earlier versions. Dashboards Grafana loaded from
provisioned files cannot be overwritten through the API: push is for a Grafana without them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from citywatch.dashboards import FOLDER
from citywatch.dashboards.build import build_files
from citywatch.errors import CitywatchError
from citywatch.i18n import DEFAULT_LANGUAGE


class PushError(CitywatchError):
    pass


@dataclass
class Pushed:
    uid: str
    title: str
    url: str
    version: int | None


def load_dashboards(source: Path | None = None, language: str = DEFAULT_LANGUAGE) -> list[dict[str, Any]]:
    """From `source` (a directory of dashboard JSON files) or a fresh build in `language`."""
    if source is None:
        return [json.loads(text) for rel, text in sorted(build_files(language=language).items())
                if rel.startswith("dashboards/")]
    files = sorted(source.glob("*.json"))
    if not files:
        raise PushError(f"no dashboard JSON files in {source}")
    return [json.loads(p.read_text()) for p in files]


def _ensure_folder(api: GrafanaApi, uid: str, title: str) -> None:
    try:
        api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(title, uid=uid)


NOT_GRAFANA = ("{url} does not look like Grafana ({why}): give Grafana's base URL, e.g. http://localhost:3000 "
               "(--url or GRAFANA_URL)")


def _check_grafana(api: GrafanaApi, url: str) -> None:
    """Grafana answers GET /api/health with JSON naming its database; anything else is not Grafana."""
    try:
        health = api.health.check()  # (connect() would also log a critical line of its own)
    except GrafanaException as exc:
        raise PushError(NOT_GRAFANA.format(url=url, why=f"GET /api/health answered HTTP {exc.status_code}")) from None
    if not isinstance(health, dict) or "database" not in health:
        raise PushError(NOT_GRAFANA.format(url=url, why="GET /api/health did not answer Grafana's health JSON"))


def _one_line(text: Any, limit: int = 200) -> str:
    """A server's answer as one short line (an HTML error page is not a message)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def push(url: str, token: str | None, dashboards: list[dict[str, Any]] | None = None, folder: str = FOLDER,
         timeout: float = 10.0, on_each: Callable[[], None] | None = None) -> list[Pushed]:
    """Create or overwrite every dashboard in `folder` (created if missing). Raises PushError (one
    line saying what to do). `on_each()` after each dashboard (a progress bar)."""
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    try:
        _check_grafana(api, url)
        _ensure_folder(api, folder, folder)
        done = []
        for dash in dashboards if dashboards is not None else load_dashboards():
            body = {k: v for k, v in dash.items() if k != "id"}  # ids are per Grafana instance; uids are ours
            result = api.dashboard.update_dashboard({"dashboard": body, "folderUid": folder, "overwrite": True,
                                                     "message": "citywatch dashboards push"})
            done.append(Pushed(uid=result.get("uid", body.get("uid", "")), title=body.get("title", ""),
                               url=result.get("url", ""), version=result.get("version")))
            if on_each is not None:
                on_each()
        return done
    except GrafanaException as exc:
        hint = ("; give a service account token with the Editor role (--token or GRAFANA_TOKEN)"
                if exc.status_code in (401, 403) else "")
        raise PushError(f"Grafana at {url} answered HTTP {exc.status_code}: {_one_line(exc.message)}{hint}") from None
    except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
        why = _one_line(exc)
        raise PushError(f"cannot reach Grafana at {url} ({why}): is it running, and is --url right?") from None
