"""The service on a two-node Ray cluster: ingress replicas and index shards on both nodes, all correct.

A subprocess driver (the pytest process already has the session's Ray) starts a
``ray.cluster_utils.Cluster`` of a head and one worker node of one CPU each, and deploys
``build_app`` with two ingress replicas of 0.6 CPU (two cannot share a node, so one lands on
each) and the tenant's indexes split over two index shards of 0.3 CPU (after an ingress replica
and the 0.1-CPU catalogue, a node has room for one): every search fans out across the nodes.
The deep tier is off here (no room left; it is tested through HTTP in tests/serving/api).
Listings and their copies from other sellers go through the head's HTTP proxy; every copy
must name its original, and both replicas must have served some of them (the proxy's
preference for its own node's replica is off: both nodes are one machine here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.api.test_crash import session_pids

ROOT = Path(__file__).resolve().parents[2]
PAIRS = 8

DRIVER = r'''
import json, sys, time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from serving.config import MarketGuardConfig
from serving.deployments.app import APP_NAME, build_app
from tests.serving.api.helpers import listing, signal

data_dir, port, pairs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
result = {}
try:
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cluster.wait_for_nodes()
    config = MarketGuardConfig.model_validate({"data_dir": str(data_dir), "service": {
        "port": port, "ingress": {"num_replicas": 2, "num_cpus": 0.6}, "catalogue": {"num_cpus": 0.1},
        "index_shards": {"count": 2, "num_cpus": 0.3}, "deep": {"enabled": False}}})
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not ready in 240 s"
        time.sleep(1)
    result["ready_s"] = round(time.monotonic() - t0, 1)
    replicas = {}
    for actor in ray._private.state.actors(actor_state_name="ALIVE").values():
        name = actor.get("Name") or ""
        if name.startswith("SERVE_REPLICA::"):
            replicas[name] = actor["Address"]["NodeID"]
    result["replica_nodes"] = replicas
    result["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    matched = []
    with httpx.Client(base_url=base, timeout=120) as http:
        for k in range(pairs):
            a, b = f"N{k}-a", f"N{k}-b"
            r = http.post("/v1/listings", json=listing(a, f"node-seller-{k}a", title=k % 9, image=700 + k))
            assert r.status_code == 200, r.text[:300]
            r = http.post("/v1/listings", json=listing(b, f"node-seller-{k}b", title=k % 9, image=700 + k))
            assert r.status_code == 200, r.text[:300]
            cross = signal(r.json(), "near_duplicate.cross_seller_count")
            matched.append(a in {m["id"] for m in cross["evidence"]["matches"]})
    result["matched"] = matched
    # Which replica served the posts: each replica's access log (one file per replica, both nodes).
    served = {}
    for _ in range(20):
        logs = {p for node in [cluster.head_node, *cluster.worker_nodes]
                for p in Path(node.get_logs_dir_path()).glob("serve/replica_marketguard_ingress_*.log")}
        served = {p.name: p.read_text(errors="replace").count("POST /v1/listings 200") for p in logs}
        if sum(served.values()) >= 2 * pairs:
            break
        time.sleep(0.5)
    result["served"] = served
    result["total_s"] = round(time.monotonic() - t0, 1)
finally:
    print(json.dumps(result), flush=True)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ingress_replicas_on_two_nodes_both_answer(tmp_path: Path, data_dir: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETGUARD_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    # The proxy prefers the replica on its own node while that one has room: on two nodes of one
    # machine, both replicas are as close, so let it route by load alone (inherited by the nodes).
    env["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    proc = subprocess.Popen([sys.executable, str(script), str(data_dir), str(_free_port()), str(PAIRS)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:  # a driver that hung or died leaves no Ray process behind (they keep its session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{err[-6000:]}"
    result = json.loads(lines[-1])
    print(f"\ntwo-node cluster: {json.dumps(result)}")
    assert len(result["nodes"]) == 2
    ingress = {name: node for name, node in result["replica_nodes"].items() if "#ingress#" in name}
    assert len(ingress) == 2 and set(ingress.values()) == set(result["nodes"]), result["replica_nodes"]
    shards = {name: node for name, node in result["replica_nodes"].items() if "#index-shard-" in name}
    assert len(shards) == 2 and set(shards.values()) == set(result["nodes"]), result["replica_nodes"]
    assert result["matched"] == [True] * PAIRS
    served = {log.removeprefix("replica_marketguard_ingress_").removesuffix(".log"): n
              for log, n in result["served"].items()}
    assert set(served) == {name.rsplit("#", 1)[1] for name in ingress}, (served, ingress)
    assert all(n >= 1 for n in served.values()), served  # each replica, on its node, answered
    assert sum(result["served"].values()) == 2 * PAIRS
