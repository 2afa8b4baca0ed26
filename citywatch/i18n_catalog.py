"""Keep the gettext catalogs in step with the code (Babel), and say what is missing.

    python -m citywatch.i18n_catalog update   # extract from the code, update both .po files
    python -m citywatch.i18n_catalog check    # exit 1 listing stale or untranslated messages

`update` is `pybabel extract -F babel.cfg` + `pybabel update --no-fuzzy-matching` (no guessed
translations: a new message stays empty until someone translates it), then fills the English
catalog with its message ids (English is the id language). Translate the new entries of
`citywatch/locale/zh_CN/LC_MESSAGES/citywatch.po` by hand; `check` (and tests/test_i18n.py) fails
while one is empty. No location comments: the catalogs change only when messages do.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po, write_po

from citywatch.i18n import _CATALOG_DIRS, DOMAIN, LANGUAGES, LOCALE_DIR, catalog_path

ROOT = Path(__file__).resolve().parent.parent
BABEL_CFG = ROOT / "babel.cfg"
_FIELD = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)(?:[:!][^{}]*)?\}")


_CLICK_DECORATORS = frozenset({"command", "group"})
_CLICK_HELP_CALLS = frozenset({"option", "Option", "command", "group"})


def extract_click(fileobj: IO[bytes], keywords: Any, comment_tags: Collection[str],
                  options: Any) -> Iterator[tuple[Any, ...]]:
    """Babel extraction method (babel.cfg): the usual Python messages, plus the help of click commands
    (the docstring of a function decorated with `.command(...)`/`.group(...)`, cleaned as click shows
    it) and `help=`/`short_help=` texts of options and commands (citywatch.cli_help translates them)."""
    from babel.messages.extract import extract_python

    source = fileobj.read()
    yield from extract_python(io.BytesIO(source), keywords, comment_tags, options)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and any(_is_click(d, _CLICK_DECORATORS) for d in node.decorator_list):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.lineno, None, inspect.cleandoc(doc).partition("\f")[0], ["click help"]
        if isinstance(node, ast.Call) and _is_click(node, _CLICK_HELP_CALLS):
            for kw in node.keywords:
                if kw.arg in ("help", "short_help") and isinstance(kw.value, ast.Constant) \
                        and isinstance(kw.value.value, str) and kw.value.value:
                    yield kw.value.lineno, None, kw.value.value, ["click help"]


def _is_click(node: ast.expr, names: frozenset[str]) -> bool:
    call = node.func if isinstance(node, ast.Call) else node
    return isinstance(call, ast.Attribute) and call.attr in names or isinstance(call, ast.Name) and call.id in names


def _pybabel(*args: str) -> None:
    CommandLineInterface().run(["pybabel", "-q", *args])  # type: ignore[no-untyped-call]


def extract(out: Path) -> Catalog:
    """Extract every message of the package into the template `out` and return it."""
    _pybabel("extract", "-F", str(BABEL_CFG), "-o", str(out), "--no-location", "--sort-output",
             "-k", "NP_:1c,2", "-c", "TRANSLATORS:", "--project", "citywatch", "-w", "100", str(ROOT))
    with out.open("rb") as f:
        return read_po(f)


def read(language: str) -> Catalog:
    with catalog_path(language).open("rb") as f:
        return read_po(f)


def update() -> None:
    """Bring both catalogs in step with the code; English translations are the ids."""
    with tempfile.TemporaryDirectory() as tmp:
        pot = Path(tmp) / f"{DOMAIN}.pot"
        extract(pot)
        for language in LANGUAGES:
            path = catalog_path(language)
            if not path.exists():
                _pybabel("init", "-i", str(pot), "-d", str(LOCALE_DIR), "-D", DOMAIN, "-l", _CATALOG_DIRS[language],
                         "--no-wrap")
            _pybabel("update", "-i", str(pot), "-d", str(LOCALE_DIR), "-D", DOMAIN, "-l", _CATALOG_DIRS[language],
                     "--no-fuzzy-matching", "--ignore-obsolete", "-w", "100")
    english = read("en")
    for message in english:
        if message.id and not _translated(message.string):
            message.string = message.id
    with catalog_path("en").open("wb") as f:
        write_po(f, english, no_location=True, width=100, sort_output=True)


def _translated(string: str | tuple[str, ...] | list[str] | None) -> bool:
    if isinstance(string, (tuple, list)):
        return bool(string) and all(string)
    return bool(string)


def fields(text: str) -> set[str]:
    """The `str.format` fields a message uses ({n}, {name:g}); `{{` is a literal brace."""
    return set(_FIELD.findall(text))


def problems() -> list[str]:
    """What is wrong with the shipped catalogs: stale against the code, untranslated, fuzzy, or a
    translation whose format fields differ from its message id's (it would fail at `.format`)."""
    found: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        code_ids = {m.id for m in extract(Path(tmp) / "x.pot") if m.id}
    for language in LANGUAGES:
        catalog = read(language)
        ids = {m.id for m in catalog if m.id}
        found += [f"{language}: not in the catalog (run update): {i!r}" for i in sorted(code_ids - ids, key=str)]
        found += [f"{language}: no longer in the code (run update): {i!r}" for i in sorted(ids - code_ids, key=str)]
        for m in catalog:
            if not m.id:
                continue
            if m.fuzzy:
                found.append(f"{language}: fuzzy: {m.id!r}")
            if not _translated(m.string):
                found.append(f"{language}: untranslated: {m.id!r}")
                continue
            ids_text = m.id if isinstance(m.id, str) else " ".join(m.id)
            strings = [m.string] if isinstance(m.string, str) else list(m.string or ())
            for s in strings:
                if not fields(s) <= fields(ids_text):
                    found.append(f"{language}: fields {sorted(fields(s))} not in the message id: {m.id!r}")
    return found


def main(argv: list[str]) -> int:
    if argv[:1] == ["update"]:
        update()
        return 0
    if argv[:1] == ["check"]:
        found = problems()
        for line in found:
            print(line)
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
