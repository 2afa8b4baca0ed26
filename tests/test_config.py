"""Configuration: config.yaml documents every key with its default; env overrides; clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from citywatch.cli import main
from citywatch.config import Settings, load_settings
from citywatch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def keys_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= keys_of(annotation, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def keys_in(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> set[str]:
    """Keys of the YAML, descending only where the model has a nested section (not a dict field)."""
    out: set[str] = set()
    for key, value in data.items():
        field = model.model_fields.get(key)
        annotation = field.annotation if field else None
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= keys_in(value, annotation, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_config_yaml_documents_every_key_with_its_default() -> None:
    documented = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert keys_in(documented, Settings) == keys_of(Settings)
    assert load_settings(ROOT / "config.yaml").model_dump() == load_settings(Path("/dev/null")).model_dump()


@pytest.mark.parametrize("env,value,path", [
    ("CITYWATCH_MQTT__URL", "mqtt://broker.example:1884", ("mqtt", "url")),
    ("CITYWATCH_MQTT__EMBEDDED", "true", ("mqtt", "embedded")),
    ("CITYWATCH_WEBHOOKS__URL", "https://dispatch.example/hook", ("webhooks", "url")),
    ("CITYWATCH_INFLUX__URL", "http://influx.example:8086", ("influx", "url")),
    ("CITYWATCH_INFLUX__ORG", "jiaxing", ("influx", "org")),
    ("CITYWATCH_INFLUX__BUCKET", "city", ("influx", "bucket")),
    ("CITYWATCH_DATA_DIR", "/var/lib/cw", ("data_dir",)),
    ("CITYWATCH_RULES__GAS__LEVEL1_PCT", "20", ("rules", "gas", "level1_pct")),
])
def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, env: str, value: str, path: tuple[str, ...]) -> None:
    monkeypatch.setenv(env, value)
    node: Any = load_settings(ROOT / "config.yaml")
    for part in path:
        node = getattr(node, part)
    expected: Any = {"true": True}.get(value, value)
    if path[-1] == "level1_pct":
        expected = float(value)
    assert (str(node) if isinstance(expected, str) else node) == expected


def test_secrets_from_env_and_files_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYWATCH_WEBHOOKS__SECRET", "hook-secret-123")
    token_file = tmp_path / "token"
    token_file.write_text("influx-token-456\n")
    monkeypatch.setenv("CITYWATCH_INFLUX__TOKEN_FILE", str(token_file))
    s = load_settings(ROOT / "config.yaml")
    assert s.webhooks.secret is not None and s.webhooks.secret.get_secret_value() == "hook-secret-123"
    assert s.influx.token is not None and s.influx.token.get_secret_value() == "influx-token-456"
    assert "hook-secret-123" not in repr(s) and "influx-token-456" not in str(s)
    result = CliRunner().invoke(main, ["--config", str(ROOT / "config.yaml"), "config"])
    assert result.exit_code == 0, result.output
    assert "hook-secret-123" not in result.output and "influx-token-456" not in result.output
    assert '"secret": "**********"' in result.output


@pytest.mark.parametrize("text,key", [
    ("mqtt:\n  urll: mqtt://x\n", "mqtt.urll"),
    ("rules:\n  gas:\n    level1_pct: lots\n", "rules.gas.level1_pct"),
    ("mqtt:\n  url: http://not-mqtt\n", "mqtt.url"),
    ("mqtt:\n  qos: 7\n", "mqtt.qos"),
])
def test_bad_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path)


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYWATCH_ALERTS__REVIEW_DEADLINE_H", "soon")
    with pytest.raises(ConfigError, match=r"alerts\.review_deadline_h"):
        load_settings(ROOT / "config.yaml")


def test_missing_secret_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYWATCH_WEBHOOKS__SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="webhooks.secret_file"):
        load_settings(ROOT / "config.yaml")
