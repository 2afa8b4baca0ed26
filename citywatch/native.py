"""Whether the hot path runs compiled (mypyc, built by setup.py) and whether the build is stale.

An editable install compiles the modules in place; a `.py` edited afterwards is shadowed by its
older `.so` until `pip install -e .` runs again. The tests refuse to run on such a stale build,
and benchmarks print which build they measured.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
HOT_PATH = ("citywatch.streams.pipeline", "citywatch.detectors.baseline", "citywatch.detectors.lifecycle")


def compiled_path(module: str) -> Path | None:
    """The extension file that `import module` would load, or None when it loads the .py."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    return origin if origin.suffix in importlib.machinery.EXTENSION_SUFFIXES or origin.suffix == ".so" else None


def is_compiled() -> bool:
    return all(compiled_path(m) is not None for m in HOT_PATH)


def stale_sources() -> list[str]:
    """Sources newer than the extension that shadows them (edited since the last build)."""
    stale = []
    for so in PACKAGE.rglob("*.so"):
        source = so.with_name(so.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > so.stat().st_mtime:
            stale.append(str(source.relative_to(PACKAGE.parent)))
    return sorted(stale)


def describe() -> str:
    return "compiled (mypyc)" if is_compiled() else "pure Python"
