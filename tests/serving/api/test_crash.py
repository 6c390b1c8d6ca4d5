"""Nothing acknowledged is lost: ``marketguard serve`` SIGKILLed mid-stream, then started again.

The whole service (its own local Ray, the Serve replicas, every process of its group) is killed
while four clients are still posting listings; a new one on the same data dir must have every
listing that got a 2xx, findable by a copy, and nothing half-written: a listing whose post was cut
off is either all there (signals, and matched by a copy) or not at all (404, and matched by no copy).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.api.helpers import photo_b64
from tests.serving.api.helpers import signal as signal_of
from tests.serving.conftest import MODELS_DIR

ROOT = Path(__file__).resolve().parents[3]
CLIENTS = 4
KILL_AFTER_ACKS = 40
COPIES = 3  # of each base listing, each from its own seller (a copy's evidence stays under 20 entries)
BASES = 30  # more than the clients can post before the kill
ITEMS = ["mountain bike", "espresso machine", "leather sofa", "gaming laptop", "wedding dress",
         "electric guitar", "baby stroller", "camera drone", "garden tractor", "vinyl records",
         "sewing machine", "telescope",
         "aquarium", "sea kayak", "treadmill", "microwave oven", "marble chess set", "snowboard", "violin",
         "laser printer", "air fryer", "camping tent", "golf clubs", "piano keyboard", "rowing machine",
         "ceiling lamp", "oak wardrobe", "pressure washer", "baby cot", "road helmet"]
PLACES = ["Leeds", "Bristol", "Oxford", "Cardiff", "York", "Bath"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_listing(b: int) -> dict[str, Any]:
    item = ITEMS[b % len(ITEMS)]
    rec: dict[str, Any] = {
        "title": f"{item.title()} for sale, collection from {PLACES[b % len(PLACES)]}",
        "description": f"Selling my {item}; model {1000 + 37 * b}, bought {2010 + b % 12}. Cash on pickup.",
        "price": float(20 + 13 * b), "currency": "GBP", "category": item.split()[-1]}
    if b % 3 == 0:  # a third of them with a photo
        rec["images"] = [{"data_b64": photo_b64(500 + b)}]
    return rec


def copy_of(b: int, lid: str, seller: str) -> dict[str, Any]:
    return {"listing_id": lid, "seller_id": seller, **base_listing(b)}


def start(data_dir: Path, port: int, log: Path, config: Path | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETGUARD_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    if config is not None:
        env["MARKETGUARD_CONFIG"] = str(config)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--port", str(port),
                                 "--data-dir", str(data_dir)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def session_pids(sid: int) -> list[int]:
    """Live processes of a session: the service's group, and each Ray worker's group of its own."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
            if int(session) == sid and state != "Z":
                pids.append(int(entry))
    return pids


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole service at once: its process group (the CLI, GCS, raylet, agents) and the
    Ray workers (Serve controller, proxy, replicas), which the raylet puts in groups of their own
    within the session the service leads (``start_new_session``)."""
    others = session_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while others and time.monotonic() < deadline:
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        others = session_pids(proc.pid)
    proc.wait(timeout=30)
    assert not others, f"still alive after SIGKILL: {others}"


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("index_shards", [1, 2], ids=["one-index", "split-over-2-index-shards"])
def test_nothing_acknowledged_is_lost_when_the_service_is_killed(tmp_path: Path, index_shards: int) -> None:
    """With the tenant's indexes split over index shards, their processes die with the rest."""
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    config = tmp_path / "marketguard.yaml"
    config.write_text(f"service:\n  index_shards: {{count: {index_shards}, num_cpus: 0.1}}\n")
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    os.symlink(MODELS_DIR, data_dir / "models")
    log = tmp_path / "serve.log"
    posts = [(b, f"K{b}-{c}", f"seller-{b}-{c}") for b in range(BASES) for c in range(COPIES)]
    outcome: dict[str, str] = {}  # listing id -> "ack" | "error <why>" (its post was cut off)
    in_flight: list[str] = []  # each client's first post that the kill cut off
    early_errors: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()
    t0 = time.monotonic()

    def client(k: int, base: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for b, lid, seller in posts[k::CLIENTS]:
                try:
                    r = http.post("/v1/listings", json=copy_of(b, lid, seller))
                    result = "ack" if 200 <= r.status_code < 300 else f"error {r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    result = f"error {type(exc).__name__}"
                with lock:
                    outcome[lid] = result
                    if result != "ack":
                        if not killed.is_set():
                            early_errors.append(f"{lid}: {result}")
                        in_flight.append(lid)
                    elif not killed.is_set() and sum(v == "ack" for v in outcome.values()) >= KILL_AFTER_ACKS:
                        killed.set()  # mid-stream: the other clients are still posting
                        kill(proc)
                if result != "ack":
                    return  # this client's stream was cut off: the service is gone

    proc = start(data_dir, port := free_port(), log, config)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log)
        t_ready = time.monotonic()
        clients = [threading.Thread(target=client, args=(k, base), daemon=True) for k in range(CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        assert killed.is_set(), f"only {sum(v == 'ack' for v in outcome.values())} acks in 120 s"
        assert not any(t.is_alive() for t in clients)
    finally:
        kill(proc)
    assert not early_errors, early_errors
    acks = sorted(lid for lid, v in outcome.items() if v == "ack")
    assert len(acks) >= KILL_AFTER_ACKS and len(acks) < len(posts), "the kill did not land mid-stream"
    t_killed = time.monotonic()

    proc = start(data_dir, port := free_port(), log, config)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, log)
        t_restarted = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as http:
            # Every acknowledged listing has its signals.
            for lid in acks:
                r = http.get(f"/v1/entities/listing/{lid}/signals")
                assert r.status_code == 200, (lid, r.status_code, r.text[:300])
                signal_of(r.json(), "near_duplicate.count")
            # Cut-off posts: all there or not at all, never a 5xx.
            present = {}
            for lid in in_flight:
                r = http.get(f"/v1/entities/listing/{lid}/signals")
                assert r.status_code in (200, 404), (lid, r.status_code, r.text[:300])
                present[lid] = r.status_code == 200
                if present[lid]:
                    signal_of(r.json(), "near_duplicate.count")
            # The indexes agree with the store: a copy from a new seller finds a sample of the
            # acknowledged listings and every cut-off post that is there, and none that is not.
            by_id = {lid: b for b, lid, _ in posts}
            sample = acks[:: max(1, len(acks) // 8)] + in_flight
            for n, lid in enumerate(sample):
                r = http.post("/v1/listings", json=copy_of(by_id[lid], f"after-{n}", f"new-seller-{n}"))
                assert r.status_code == 200, r.text[:300]
                found = {m["id"] for m in signal_of(r.json(), "near_duplicate.count")["evidence"]["matches"]}
                if lid in acks or present[lid]:
                    assert lid in found, (lid, found)
                else:
                    assert lid not in found, (lid, found)
    finally:
        kill(proc)
    print(f"\n{len(acks)} acknowledged, {len(in_flight)} cut off ({sum(present.values())} of them stored), "
          f"{len(sample)} copies matched; first start {t_ready - t0:.0f} s, "
          f"restart {t_restarted - t_killed:.0f} s")
