"""The service's configuration: one typed model, loaded from one file.

This is the only module that reads environment variables:
``MARKETGUARD_CONFIG`` (path of a YAML or JSON config file) and
``MARKETGUARD_DATA_DIR`` (overrides ``data_dir``). Command-line flags override both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from indexes.config import IndexesConfig
from signals.config import SignalsConfig
from signals.errors import InvalidInput, field_path

ENV_CONFIG = "MARKETGUARD_CONFIG"
ENV_DATA_DIR = "MARKETGUARD_DATA_DIR"


class MarketGuardConfig(BaseModel):
    """Everything a MarketGuard process needs to know, with embedded defaults."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        default=Path("./var"),
        description="signal store, index snapshots, cached models and logs live here",
    )
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    indexes: IndexesConfig = Field(default_factory=IndexesConfig)


def load_config(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> MarketGuardConfig:
    """Load the config: file (``path`` or ``$MARKETGUARD_CONFIG``), then env, then flags.

    Raises :class:`InvalidInput` naming the bad setting (``signals.text_embedding.threads``).
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG])
    raw: dict[str, Any] = _read_file(path) if path is not None else {}
    if env.get(ENV_DATA_DIR):
        raw["data_dir"] = env[ENV_DATA_DIR]
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    try:
        return MarketGuardConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = field_path(tuple(first["loc"]))
        msg = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidInput(f"config.{where}" if where else "config", msg) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput("config", f"config file {str(path)!r} does not exist", "not_found") from None
    except OSError as exc:
        raise InvalidInput("config", f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fmt = "JSON" if path.suffix == ".json" else "YAML"
        raise InvalidInput("config", f"{path} is not valid {fmt}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput("config", f"{path} must hold a mapping of settings")
    return data
