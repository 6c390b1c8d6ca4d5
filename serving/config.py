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


class BatchConfig(BaseModel):
    """The batch Ray job over a catalogue (``marketguard batch``, ``serving/batch/job.py``)."""

    model_config = ConfigDict(extra="forbid")

    unit_bytes: int = Field(default=4 << 20, ge=1024, description="JSONL/CSV bytes per checkpointed unit")
    unit_rows: int = Field(default=5000, ge=1, description="Parquet rows per checkpointed unit")
    batch_size: int = Field(default=64, ge=1, le=4096, description="records per extractor call")
    actors: int | None = Field(default=None, ge=1, le=10_000,
                               description="extractor actors; default: the cluster's CPUs / actor_cpus, "
                                           "less one CPU left for the read tasks")
    actor_cpus: float = Field(default=1.0, gt=0, le=64, description="logical CPUs reserved per actor")
    query_block: int = Field(default=4096, ge=1, description="queries per block of the all-pairs search")
    top: int = Field(default=10, ge=1, le=1000, description="clusters and sellers listed in the summary")


class MarketGuardConfig(BaseModel):
    """Everything a MarketGuard process needs to know, with embedded defaults."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        default=Path("./var"),
        description="signal store, index snapshots, cached models and logs live here",
    )
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    indexes: IndexesConfig = Field(default_factory=IndexesConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)


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
