"""Honest dependencies: what citywatch/ imports is declared in pyproject.toml and what is declared is
imported (both directions, read with ast); the same for tests/ and the `test` extra; every bound has an
upper limit (a major, or a 0.x minor) and admits the version installed, i.e. the one tested; the
Grafana dashboards are built by the SDK that targets the Grafana image docker-compose runs."""

from __future__ import annotations

import ast
import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
TEST_EXTRA = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]]

# Imported but not declared, because a declared dependency pins it exactly (checked below).
PINNED_BY = {"pydantic-core": "pydantic"}
# Declared (test extra) but never imported, with the reason.
NOT_IMPORTED = {"pytest-timeout": "a pytest plugin: `timeout` in [tool.pytest.ini_options]",
                "ruff": "run by .ci/run before the tests (`ruff check`)",
                "mypy": "run by .ci/run before the tests (`mypy --strict citywatch`)"}
# Grafana release (major, minor) -> the newest dashboard schemaVersion it reads (older ones it migrates).
GRAFANA_SCHEMA = {(10, 1): 38, (11, 2): 39}


def names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


def imported_distributions(directory: Path, local: set[str]) -> dict[str, set[str]]:
    """Distribution -> the files importing it, for every absolute import under `directory` (also
    those inside functions and TYPE_CHECKING blocks), leaving out the standard library and `local`."""
    providers = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dists = providers.get(top)
                assert dists, f"{path.relative_to(ROOT)} imports {top}, which no installed distribution provides"
                for dist in dists:
                    found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_package_declares_what_it_imports_and_imports_what_it_declares() -> None:
    imported = imported_distributions(ROOT / "citywatch", {"citywatch"})
    declared = names(DEPENDENCIES)
    undeclared = {d: sorted(files)[:3] for d, files in imported.items() if d not in declared and d not in PINNED_BY}
    assert not undeclared, f"imported by citywatch/ but not in [project].dependencies: {undeclared}"
    unused = declared - set(imported)
    assert not unused, f"declared in [project].dependencies but never imported by citywatch/: {sorted(unused)}"
    assert "river" not in declared  # never imported (issue 18): removed with scipy, 143 MB


def test_what_is_pinned_by_another_dependency_is_pinned_exactly() -> None:
    for dist, parent in PINNED_BY.items():
        assert canonicalize_name(parent) in names(DEPENDENCIES)
        requires = [Requirement(r) for r in metadata.requires(parent) or []]
        pins = [r for r in requires if canonicalize_name(r.name) == dist]
        assert pins and all(s.operator == "==" for r in pins for s in r.specifier), (dist, pins)


def test_the_tests_declare_what_they_import() -> None:
    imported = imported_distributions(ROOT / "tests", {"citywatch", "tests", "benchmarks"})  # the repo's own
    allowed = names(DEPENDENCIES) | names(TEST_EXTRA) | set(PINNED_BY)
    undeclared = {d: sorted(files)[:3] for d, files in imported.items() if d not in allowed}
    assert not undeclared, f"imported by tests/ but neither a dependency nor in the test extra: {undeclared}"
    unused = names(TEST_EXTRA) - set(imported) - set(NOT_IMPORTED)
    assert not unused, f"in the test extra but never imported by tests/: {sorted(unused)}"


def test_every_bound_is_capped_and_admits_what_is_installed() -> None:
    for requirement in DEPENDENCIES + TEST_EXTRA:
        operators = {s.operator for s in requirement.specifier}
        assert operators & {"<", "==", "~="}, f"{requirement}: no upper bound (pin the major: <N)"
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), \
            f"{requirement}: the installed (tested) {requirement.name} {installed} is outside the bounds"


def grafana_image() -> tuple[int, int]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    name, _, tag = image.partition(":")
    assert name == "grafana/grafana" and tag.count(".") == 2, f"pin grafana to a release: {image}"
    major, minor, _ = tag.split(".")
    return int(major), int(minor)


def test_the_dashboards_target_the_grafana_that_compose_runs() -> None:
    from grafana_foundation_sdk.models import dashboard as sdk_dashboard

    version = metadata.version("grafana-foundation-sdk")  # "<build epoch>!<Grafana version it targets>"
    target = tuple(int(p) for p in version.partition("!")[2].split(".")[:2])
    grafana = grafana_image()
    assert target == grafana, f"grafana-foundation-sdk {version} targets Grafana {target}, compose runs {grafana}"
    (pin,) = [r for r in DEPENDENCIES if canonicalize_name(r.name) == "grafana-foundation-sdk"]
    assert str(pin.specifier) == f"=={version}", "pin the SDK build the dashboards were generated and tested with"
    written = sdk_dashboard.Dashboard().schema_version
    assert grafana in GRAFANA_SCHEMA, f"add Grafana {grafana}'s dashboard schemaVersion to GRAFANA_SCHEMA"
    files = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert files
    for path in files:
        schema = json.loads(path.read_text())["schemaVersion"]
        assert schema == written, f"{path.name}: schemaVersion {schema}, the SDK writes {written}: rebuild"
        assert schema <= GRAFANA_SCHEMA[grafana], f"{path.name}: schemaVersion {schema} is newer than Grafana {grafana}"
