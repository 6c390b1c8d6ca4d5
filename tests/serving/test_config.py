"""Config loading: file, environment, flags, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import load_config
from signals.errors import InvalidInput


def test_defaults_without_a_file() -> None:
    cfg = load_config(env={})
    assert cfg.data_dir == Path("./var")
    assert cfg.signals.text_embedding.backend == "onnx"


def test_file_then_env_then_flag(tmp_path: Path) -> None:
    f = tmp_path / "mg.yaml"
    f.write_text("data_dir: /from/file\nsignals:\n  text_embedding:\n    backend: torch\n")
    assert load_config(f, env={}).data_dir == Path("/from/file")
    env = {"MARKETGUARD_CONFIG": str(f), "MARKETGUARD_DATA_DIR": "/from/env"}
    cfg = load_config(env=env)
    assert cfg.data_dir == Path("/from/env") and cfg.signals.text_embedding.backend == "torch"
    assert load_config(env=env, data_dir=Path("/from/flag")).data_dir == Path("/from/flag")


def test_json_config(tmp_path: Path) -> None:
    f = tmp_path / "mg.json"
    f.write_text('{"signals": {"content_rules": {"prohibited_terms": {"*": ["replica"]}}}}')
    assert load_config(f, env={}).signals.content_rules.prohibited_terms == {"*": ["replica"]}


@pytest.mark.parametrize(("text", "field"), [
    ("signals:\n  text_embedding:\n    backend: tensorflow\n", "config.signals.text_embedding.backend"),
    ("signals:\n  text_embeding: {}\n", "config.signals.text_embeding"),
    ("- a\n- list\n", "config"),
    ("a: [unclosed\n", "config"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "mg.yaml"
    f.write_text(text)
    with pytest.raises(InvalidInput) as info:
        load_config(f, env={})
    assert info.value.field == field


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    config_section = readme.split("## Configuration", 1)[1]
    block = config_section.split("```yaml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "readme.yaml"
    f.write_text(block)
    cfg = load_config(f, env={})
    assert cfg.signals.content_rules.prohibited_terms["acme-eu"] == ["ivory"]
    assert cfg.batch.unit_bytes == 4 << 20


def test_readme_rayjob_example_is_valid_yaml_running_the_batch_command() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    job = next(yaml.safe_load(b.split("```", 1)[0]) for b in readme.split("```yaml\n")[1:]
               if "kind: RayJob" in b.split("```", 1)[0])
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("marketguard batch listings")
    assert "--address auto" in job["spec"]["entrypoint"]


def test_index_settings_live_in_the_same_file(tmp_path: Path) -> None:
    f = tmp_path / "mg.yaml"
    f.write_text("indexes:\n  pdq:\n    threshold: 20\n")
    assert load_config(f, env={}).indexes.pdq.threshold == 20
    f.write_text("indexes:\n  pdq:\n    threshold: 999\n")
    with pytest.raises(InvalidInput) as info:
        load_config(f, env={})
    assert info.value.field == "config.indexes.pdq.threshold"
