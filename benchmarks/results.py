"""Figures a benchmark hands to `run.py` for its summary table (`--result FILE`: one JSON object)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(path: str | None, **figures: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(figures))
