"""Babel extraction for the dashboards (babel.cfg): the display strings of a fresh English build, so the
catalogs hold every text a dashboard shows. Apart from language.py, which the build itself uses."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

from citywatch.dashboards.build import dashboard
from citywatch.dashboards.language import display_strings
from citywatch.dashboards.panels import all_dashboards
from citywatch.i18n_catalog import extract_click


def extract(fileobj: IO[bytes], keywords: Any, comment_tags: Any, options: Any) -> Iterator[tuple[Any, ...]]:
    """Babel extraction method (babel.cfg, for build.py): its own Python messages, then every display
    string of a fresh English build of all dashboards."""
    yield from extract_click(io.BytesIO(fileobj.read()), keywords, comment_tags, options)
    for spec in all_dashboards():
        for text in display_strings(dashboard(spec)):
            yield 0, None, text, ["dashboard " + spec.uid]
