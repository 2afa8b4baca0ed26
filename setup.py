"""Builds the hot path (rules, alert engine, pipeline core) as C extensions with mypyc.

The same modules stay plain Python: with CITYWATCH_PURE=1, or where no C compiler or mypyc is
available, the package installs without them and runs about 1.7x slower on the hot path
(`benchmarks/core.py`). Everything else in `pyproject.toml`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

# Modules on the per-message path. They hold no msgspec Structs or pydantic models (mypyc would
# compile those classes without their class keywords): those live in model.py, schemas.py, config.py.
# The detectors are all on it (a new kind's rule module too, citywatch/kinds/), except these, which run
# at start or on a timer, or hold pydantic models.
HERE = Path(__file__).parent
NOT_HOT = {"__init__.py", "flooding.py", "registry.py", "settings.py", "kindrules.py"}
HOT_PATH = [
    "citywatch/streams/pipeline.py",
    "citywatch/ingest/topics.py",
    *sorted(str(p.relative_to(HERE)) for p in (HERE / "citywatch/detectors").glob("*.py") if p.name not in NOT_HOT),
]


def compiled_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("CITYWATCH_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("citywatch: mypyc not available, installing pure Python", file=sys.stderr)
        return []
    return mypycify(HOT_PATH, opt_level="3", debug_level="0", group_name="citywatch._native")


setup(ext_modules=compiled_modules())
