"""Upload the dashboards to a running Grafana with grafana-client (3.x: requests-based).

The datasource comes from provisioning (deploy/grafana/provisioning/datasources); this only puts
the dashboards into a folder, overwriting earlier versions. Dashboards Grafana loaded from
provisioned files cannot be overwritten through the API: push is for a Grafana without them.
"""

from __future__ import annotations

import json
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


def push(url: str, token: str | None, dashboards: list[dict[str, Any]] | None = None, folder: str = FOLDER,
         timeout: float = 10.0) -> list[Pushed]:
    """Create or overwrite every dashboard in `folder` (created if missing). Raises PushError."""
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    try:
        api.health.check()  # (connect() would also log a critical line of its own)
        _ensure_folder(api, folder, folder)
        done = []
        for dash in dashboards if dashboards is not None else load_dashboards():
            body = {k: v for k, v in dash.items() if k != "id"}  # ids are per Grafana instance; uids are ours
            result = api.dashboard.update_dashboard({"dashboard": body, "folderUid": folder, "overwrite": True,
                                                     "message": "citywatch dashboards push"})
            done.append(Pushed(uid=result.get("uid", body.get("uid", "")), title=body.get("title", ""),
                               url=result.get("url", ""), version=result.get("version")))
        return done
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url} answered HTTP {exc.status_code}: {exc.message}") from None
    except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
        raise PushError(f"cannot reach Grafana at {url}: {exc}") from None
