"""Builds the hot path (rules, alert engine, pipeline core) as C extensions with mypyc.

The same modules stay plain Python: with CITYWATCH_PURE=1, or where no C compiler or mypyc is
available, the package installs without them and runs about 1.7x slower on the hot path
(`benchmarks/core.py`). Everything else in `pyproject.toml`.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# Modules on the per-message path. They hold no msgspec Structs or pydantic models (mypyc would
# compile those classes without their class keywords): those live in model.py, schemas.py, config.py.
HOT_PATH = [
    "citywatch/streams/pipeline.py",
    "citywatch/ingest/topics.py",
    "citywatch/detectors/record.py",
    "citywatch/detectors/base.py",
    "citywatch/detectors/baseline.py",
    "citywatch/detectors/lifecycle.py",
    "citywatch/detectors/deadman.py",
    "citywatch/detectors/health.py",
    "citywatch/detectors/gas.py",
    "citywatch/detectors/noise.py",
    "citywatch/detectors/water.py",
    "citywatch/detectors/parking.py",
    "citywatch/detectors/lock.py",
    "citywatch/detectors/smoke.py",
    "citywatch/detectors/faults.py",
    "citywatch/detectors/anomaly.py",
    "citywatch/detectors/occupancy.py",
    "citywatch/detectors/access.py",
    "citywatch/detectors/reporting.py",
    "citywatch/detectors/generic.py",
    "citywatch/detectors/generic_rule.py",
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
