"""``marketguard batch --publish``: a run's signals reach the sinks, resumably, never twice once done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.config import MarketGuardConfig
from serving.sinks import batch_publish
from serving.sinks.batch_publish import publish_run
from serving.sinks.webhook import SIGNATURE_HEADER, verify_signature
from signals.errors import InvalidInput
from signals.schemas import Signal
from tests.serving.servers import Receiver


def fake_run(run_dir: Path, n: int, manifest: str = "v1") -> list[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifest.json").write_text(json.dumps({"kind": "listings", "id": manifest}))
    ids = [f"B{i}" for i in range(n)]
    with (run_dir / "signals.jsonl").open("w") as f:
        for i in ids:
            s = Signal(entity_type="listing", entity_id=i, name="near_duplicate.count", value=1,
                       source="batch@1")
            f.write(json.dumps(s.to_json_dict()) + "\n")
    return ids


def config_for(receiver: Receiver, tmp_path: Path) -> MarketGuardConfig:
    return MarketGuardConfig.model_validate({"data_dir": str(tmp_path / "state"), "sinks": {
        "webhooks": [{"url": receiver.url, "secrets": ["k"]}], "max_backoff_s": 0.05}})


def test_a_run_is_published_once_and_resumes_after_an_interruption(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    ids = fake_run(run, 23)
    cfg = config_for(receiver, tmp_path)
    monkeypatch.setattr(batch_publish, "CHUNK", 5)  # several chunks, each committed with its place
    receiver.answers = [500] * 10_000  # the receiver is down: nothing can be delivered
    with pytest.raises(TimeoutError, match="stay queued"):
        publish_run(run, cfg, deadline_s=0.5)
    assert receiver.events() and not receiver.accepted()  # tried, refused
    receiver.answers = []  # back up: the next --publish delivers what is queued, queues nothing twice
    result = publish_run(run, cfg)
    assert result["queued"] == 0 and not result["already_published"]
    got = [e["entity_id"] for e in receiver.accepted()]
    assert sorted(set(got)) == sorted(ids) and len(got) == len(ids)
    assert all(verify_signature(b, h[SIGNATURE_HEADER], ["k"]) for h, b in receiver.got if b)
    assert publish_run(run, cfg)["already_published"]  # finished: never sent again
    assert len(receiver.accepted()) == len(ids)
    fake_run(run, 4, manifest="v2")  # the run was redone: published afresh
    assert publish_run(run, cfg)["queued"] == 4
    assert len(receiver.accepted()) == len(ids) + 4


def test_publishing_needs_sinks_and_a_finished_run(tmp_path: Path, receiver: Receiver) -> None:
    with pytest.raises(InvalidInput, match="no sinks"):
        publish_run(tmp_path, MarketGuardConfig.model_validate({"data_dir": str(tmp_path)}))
    with pytest.raises(InvalidInput, match="not a finished batch run"):
        publish_run(tmp_path / "nothing", config_for(receiver, tmp_path))


def test_configuring_sinks_does_not_make_a_finished_run_another_run(tmp_path: Path) -> None:
    """The run's settings digest covers what shapes its outputs, not the service's settings: a
    webhook configured after the run (or a store URL) must not refuse its ``--publish``."""
    from serving.batch.job import BatchRequest, _manifest

    request = BatchRequest("listings", tmp_path, tmp_path / "out")
    base = MarketGuardConfig.model_validate({"data_dir": str(tmp_path)})
    digest = _manifest(request, base, [], 1)["settings_sha256"]
    service_side = MarketGuardConfig.model_validate({"data_dir": str(tmp_path / "elsewhere"), "sinks": {
        "webhooks": [{"url": "https://risk.example.com/h", "secrets": ["s"]}]},
        "store": {"backend": "postgres", "url": "postgresql://u@db/x"}, "service": {"port": 9000},
        "shadow": {"content_rules": {}}})
    assert _manifest(request, service_side, [], 1)["settings_sha256"] == digest
    shaping = MarketGuardConfig.model_validate({"data_dir": str(tmp_path), "indexes": {"thresholds": {
        "image_pdq": 20}}})
    assert _manifest(request, shaping, [], 1)["settings_sha256"] != digest
