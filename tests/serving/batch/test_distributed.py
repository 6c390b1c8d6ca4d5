"""``batch.pairs_on: cluster``: the pairs, clusters and outputs as Ray tasks, byte for byte the
driver path's (the reference), on one node, on a two-node cluster, and after a kill.

The unit tests below need no Ray: the per-component clustering against the whole-catalogue
one (the guard triggered), a range's partner lists against the whole adjacency, and
``pairs.parquet`` written from pieces against the one-table writer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes.clustering import Pairs, cluster_pairs
from indexes.config import ClusteringConfig
from indexes.near_duplicates import canonical_pairs
from serving.batch.distributed import cluster_rows, components, search_task_blocks
from serving.batch.job import BatchRequest, run_batch
from serving.batch.signals import Adjacency
from tests.serving.batch.test_job import ROOT, catalogue_rows, config, write_catalogue
from tests.serving.test_review_text import seed_banks

OUTPUTS = ("signals.jsonl", "pairs.parquet", "clusters.parquet")


# --------------------------------------------------------------------------- units
def _graph(seed: int, n: int = 300, groups: int = 12) -> tuple[Pairs, np.ndarray]:
    """Pairs within groups of near vectors (some chained through weak links), unit vectors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, 16))
    group = rng.integers(0, groups, n)
    vectors = centres[group] + rng.normal(scale=0.6, size=(n, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    a = rng.integers(0, n, 1500)
    b = np.where(rng.random(1500) < 0.9, [rng.choice(np.flatnonzero(group == group[x])) for x in a],
                 rng.integers(0, n, 1500))
    score = np.round(rng.uniform(0.9, 1.0, 1500), 2).astype(np.float32)  # ties on purpose
    return canonical_pairs(a, b, score), vectors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustering_by_component_is_the_whole_catalogues(seed: int) -> None:
    """Components bucketed, each bucket clustered alone: the same roots, the same blocked merges,
    with the chaining guard blocking merges (its decisions depend on the merge order)."""
    pairs, vectors = _graph(seed)
    n = len(vectors)
    cfg = ClusteringConfig(threshold=0.9, guard_size=4, guard_threshold=0.99)
    whole = cluster_pairs(n, pairs, cfg, vectors=vectors)
    expected = whole.labels_as_min_row()
    assert whole.blocked > 0, "the guard should have blocked some merges"

    nodes, smallest = components(pairs.a, pairs.b)
    component = smallest[np.searchsorted(nodes, pairs.a)]
    root, blocked = np.arange(n), 0
    for k in range(5):
        keep = component % 5 == k
        rows, roots, bl = cluster_rows(Pairs(pairs.a[keep], pairs.b[keep], pairs.score[keep]), cfg, vectors)
        root[rows] = roots
        blocked += bl
    assert np.array_equal(root, expected)
    assert blocked == whole.blocked


def test_components_are_the_smallest_row_of_each() -> None:
    nodes, smallest = components(np.array([5, 1, 9, 7]), np.array([1, 3, 7, 8]))
    assert nodes.tolist() == [1, 3, 5, 7, 8, 9]
    assert smallest.tolist() == [1, 1, 1, 7, 7, 7]
    empty = components(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert len(empty[0]) == len(empty[1]) == 0


def test_a_ranges_partners_are_the_whole_adjacencys() -> None:
    rng = np.random.default_rng(3)
    n = 60
    pairs = {m: canonical_pairs(rng.integers(0, n, 200), rng.integers(0, n, 200),
                                rng.random(200).astype(np.float32))
             for m in ("listing_text", "image_pdq")}
    whole = Adjacency(n, pairs)  # type: ignore[arg-type]  # str keys are Modality values
    for start, end in ((0, 17), (17, 40), (40, 60)):
        sides = {m: (Pairs(p.a[(p.a >= start) & (p.a < end)], p.b[(p.a >= start) & (p.a < end)],
                           p.score[(p.a >= start) & (p.a < end)]),
                     Pairs(p.a[(p.b >= start) & (p.b < end)], p.b[(p.b >= start) & (p.b < end)],
                           p.score[(p.b >= start) & (p.b < end)]))
                 for m, p in pairs.items()}
        part = Adjacency.of_rows(start, end, n, sides)  # type: ignore[arg-type]  # as above
        for row in range(start, end):
            got, want = part.of(row), whole.of(row)
            assert got[0].tolist() == want[0].tolist() and got[1] == want[1]
            assert got[2].tolist() == want[2].tolist()


def test_pairs_parquet_from_pieces_is_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from serving.batch import job as batch_job

    monkeypatch.setattr(batch_job, "_PAIRS_CHUNK", 4)
    meta = pa.table({"entity_id": [f"L{i}" for i in range(12)], "tenant": ["t"] * 12})
    rng = np.random.default_rng(5)
    text = canonical_pairs(rng.integers(0, 12, 30), rng.integers(0, 12, 30),
                           rng.random(30).astype(np.float32))
    pdq = canonical_pairs(np.array([1, 2]), np.array([3, 4]), np.array([0.5, 0.6], dtype=np.float32))
    whole, pieces = tmp_path / "whole.parquet", tmp_path / "pieces.parquet"
    batch_job.write_pairs_parquet(whole, meta, {"listing_text": text, "image_pdq": pdq})

    def cut(p: Pairs, at: list[int]) -> Any:
        bounds = [0, *at, len(p.a)]
        return iter([Pairs(p.a[x:y], p.b[x:y], p.score[x:y])
                     for x, y in zip(bounds, bounds[1:], strict=False)])

    batch_job.write_pair_stream(pieces, meta, {"listing_text": cut(text, [1, 2, 9, 9]),
                                               "image_pdq": cut(pdq, [0, 1])})
    assert whole.read_bytes() == pieces.read_bytes()


def test_where_the_stages_run_is_not_part_of_the_runs_settings(tmp_path: Path) -> None:
    """A run started on the driver may be resumed on the cluster (the same bytes); the
    partitions shape the work files, so they are part of it."""
    from serving.batch.job import _manifest
    from serving.config import MarketGuardConfig

    request = BatchRequest("listings", tmp_path, tmp_path / "out")

    def digest(**batch: Any) -> str:
        cfg = MarketGuardConfig.model_validate({"data_dir": str(tmp_path), "batch": batch})
        return str(_manifest(request, cfg, [], 1)["settings_sha256"])

    assert digest(pairs_on="driver", task_cpus=0.5) == digest(pairs_on="cluster") == digest()
    assert digest(partitions=4) != digest()


# --------------------------------------------------------------------------- the job


def _cfg(state: Path, pairs_on: str) -> Any:
    # Small blocks and three row ranges, so blocks, ranges and buckets are many.
    return config(state, query_block=4, partitions=3, pairs_on=pairs_on, task_cpus=0.5)


def _rows() -> list[dict[str, Any]]:
    """The campaign and honest listings three times over, sellers shared across copies."""
    return [dict(r, listing_id=f"{r['listing_id']}x{k}", seller_id=f"{r['seller_id']}{k % 2}")
            for k in range(3) for r in catalogue_rows()[:26]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> tuple[Path, Path, Path]:
    """The driver path's run (input, state, DIR)."""
    tmp = tmp_path_factory.mktemp("distributed")
    state = tmp / "state"
    state.mkdir()
    os.symlink(ROOT / "var" / "models", state / "models")
    inp = write_catalogue(tmp / "in", rows=_rows())
    out = tmp / "driver"
    run_batch(BatchRequest("listings", inp, out, progress="off"), _cfg(state, "driver"))
    return inp, state, out


def _extracted_copy(ref: Path, dest: Path, parsed: bool = True) -> Path:
    """``ref`` as it stood after its catalogue stage: same manifest (so the same observed_at)."""
    shutil.copytree(ref, dest, symlinks=True)
    for name in (*OUTPUTS, "summary.json"):
        (dest / name).unlink()
    for folder in (dest / "indexes", dest / "work" / "pairs"):
        shutil.rmtree(folder)
    if parsed:  # listings: the records parsed for the pair scorer
        shutil.rmtree(dest / "work" / "pair_records")
    return dest


def _same_bytes(got: Path, ref: Path) -> None:
    for name in OUTPUTS:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (got, ref))
    a.pop("timings"), b.pop("timings")
    assert a == b


def _cli(inp: Path, out: Path, address: str, cfg_file: Path) -> list[str]:
    return [sys.executable, "-m", "serving.cli", "batch", "listings", "--input", str(inp), "--out", str(out),
            "--address", address, "--config", str(cfg_file), "--progress", "lines"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return env | {"PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_cluster_path_writes_the_driver_paths_bytes(tmp_path: Path,
                                                    reference: tuple[Path, Path, Path]) -> None:
    inp, state, ref = reference
    out = _extracted_copy(ref, tmp_path / "cluster")
    summary = run_batch(BatchRequest("listings", inp, out, progress="off"), _cfg(state, "cluster"))
    _same_bytes(out, ref)
    assert summary["pairs"]["listing_text"] > 0 and summary["pairs"]["image_sscd"] > 0
    assert summary["clusters"] >= 10
    # The work was cut: many blocks, three ranges, three cluster buckets.
    assert len(list((out / "work" / "pairs" / "default" / "listing_text").glob("*.parquet"))) == 20
    assert len(list((out / "work" / "signals").glob("*.jsonl"))) == 3
    assert len(list((out / "work" / "clusters").glob("bucket-*.npz"))) == 3


@pytest.mark.slow
def test_two_node_cluster_writes_the_same_bytes(tmp_path: Path, reference: tuple[Path, Path, Path]) -> None:
    """A head and a worker node of one CPU each (tasks of half a CPU): every task may land on
    either node; the outputs are still the driver path's."""
    from ray.cluster_utils import Cluster

    inp, state, ref = reference
    out = _extracted_copy(ref, tmp_path / "two-nodes")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(_cfg(state, "cluster").model_dump_json())
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        res = subprocess.run(_cli(inp, out, cluster.address, cfg_file), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
    finally:
        cluster.shutdown()
    _same_bytes(out, ref)


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_killed_pair_worker_then_killed_driver_still_give_the_same_bytes(
        tmp_path: Path, reference: tuple[Path, Path, Path], ray_session: str) -> None:
    inp, state, ref = reference
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(_cfg(state, "cluster").model_dump_json())

    # (1) A Ray worker running a pair task is killed: Ray runs the task again, the job finishes.
    out = _extracted_copy(ref, tmp_path / "worker-killed")
    proc = subprocess.Popen(_cli(inp, out, ray_session, cfg_file), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for pid in _descendants(os.getpid()):  # this session's own Ray: never another's
            if _cmdline(pid).startswith("ray::_search_task"):
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=600)
    assert killed is not None, "no pair task was seen running"
    assert proc.returncode == 0, err.decode()[-4000:]
    _same_bytes(out, ref)

    # (2) The driver is killed once some block files are written; the re-run resumes.
    out = _extracted_copy(ref, tmp_path / "driver-killed")
    blocks = out / "work" / "pairs"
    proc = subprocess.Popen(_cli(inp, out, ray_session, cfg_file), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(blocks.rglob("*.parquet")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in blocks.rglob("*.parquet")}
    assert before and not (out / "summary.json").exists()
    res = subprocess.run(_cli(inp, out, ray_session, cfg_file), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "done before (resumed)" in res.stderr
    for path, mtime in before.items():  # finished blocks were not searched again
        assert path.stat().st_mtime_ns == mtime
    _same_bytes(out, ref)


@pytest.mark.slow
def test_reviews_on_the_cluster_write_the_driver_paths_bytes(tmp_path: Path,
                                                             reference: tuple[Path, Path, Path]) -> None:
    """Reviews: partners, review signals (the review banks' verdicts, the behavioural and
    collective ones of the analysis task, seeded by labels) and the per-product roll-ups merged
    from the ranges."""
    _, models_state, _ = reference
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(models_state / "models", state / "models")
    seed_banks(_cfg(state, "driver"), tmp_path)
    template = "Amazing product, fast delivery, five stars, would buy again from this seller!"
    rows = [{"review_id": f"R{i}", "product_id": f"P{i % 3}", "seller_id": "S1", "reviewer_id": f"U{i}",
             "rating": 5, "text": template if i % 2 else f"Honest review number {i} of a product I liked.",
             "created_at": "2026-11-20T10:00:00Z"} for i in range(30)]
    inp = tmp_path / "reviews.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = tmp_path / "labels.jsonl"  # seeds of the collective scores, read by the analysis task
    labels.write_text(json.dumps({"entity_type": "review", "entity_id": "R1", "label": "fraud",
                                  "labelled_at": "2026-11-21T00:00:00Z"}) + "\n")
    ref = tmp_path / "driver"
    run_batch(BatchRequest("reviews", inp, ref, progress="off", labels=labels), _cfg(state, "driver"))
    out = _extracted_copy(ref, tmp_path / "cluster", parsed=False)
    run_batch(BatchRequest("reviews", inp, out, progress="off", labels=labels), _cfg(state, "cluster"))
    _same_bytes(out, ref)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"]["review_text"] >= 15 * 14 // 2  # the template's copies, at least
    names = {json.loads(line)["name"] for line in (out / "signals.jsonl").open()}
    assert {"review.fake_text_score", "review.spam_score", "reviewer.ring_score", "product.spam_score",
            "review.rating_deviation"} <= names
    # the label seeded the propagation: R1's prior is the label's 0.99, not its features'; R3,
    # like R1 a templated five-star review by a one-off account that day, has no label
    spam = {rec["entity_id"]: rec for rec in map(json.loads, (out / "signals.jsonl").open())
            if rec["name"] == "review.spam_score"}
    assert spam["R1"]["evidence"]["prior"] == 0.99 != spam["R3"]["evidence"]["prior"]
    assert spam["R1"]["value"] > 0.9 > spam["R3"]["value"]


def test_a_range_asks_the_review_banks_for_the_whole_runs_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range starting mid-block gets its verdicts from the whole block, as the driver does:
    a kNN search's floats may depend on the batch it is in."""
    from types import SimpleNamespace

    import pyarrow as pa

    import serving.batch.signals as batch_signals

    monkeypatch.setattr(batch_signals, "_CHUNK", 4)
    n = 10
    records = [json.dumps({"review_id": f"R{i}", "product_id": "P", "seller_id": "S", "reviewer_id": f"U{i}",
                           "rating": 5, "text": f"text {i}", "created_at": "2026-11-20T10:00:00Z"})
               for i in range(n)]
    vectors = np.eye(n, 16, dtype=np.float32)
    vectors[5] = 0  # a blank text: no vector, never compared
    cat = SimpleNamespace(n=n, meta=pa.table({"record": records}), text=vectors)
    asked: list[list[str]] = []
    judge = SimpleNamespace(verdicts=lambda vecs, texts: asked.append(list(texts)) or [t for t in texts])

    def batches(start: int, end: int) -> list[list[str]]:
        asked.clear()
        for block in range(start - start % 4, end, 4):
            chunk_start, chunk_end = max(start, block), min(end, block + 4)
            parsed = [batch_signals.Review.model_validate_json(r) for r in records[chunk_start:chunk_end]]
            got = batch_signals._block_verdicts(cat, judge, block, chunk_start, parsed)  # type: ignore[arg-type]
            assert all(got[row] == f"text {row}" for row in range(chunk_start, chunk_end) if row != 5)
        return list(asked)

    whole = batches(0, n)
    assert whole == [["text 0", "text 1", "text 2", "text 3"], ["text 4", "text 6", "text 7"],
                     ["text 8", "text 9"]]
    assert batches(0, 3) + batches(3, 6) + batches(6, n) == [whole[0], whole[0], whole[1], whole[1], whole[2]]


def test_search_tasks_take_one_block_until_blocks_are_many() -> None:
    def waves(blocks: int, slots: int) -> int:  # block-times until the last task ends
        per = search_task_blocks(blocks, slots)
        tasks = [min(per, blocks - s) for s in range(0, blocks, per)]
        ends = [0] * slots
        for t in tasks:  # each task to the slot that frees first
            ends[ends.index(min(ends))] += t
        return max(ends)

    assert search_task_blocks(10, 2) == 1 and waves(10, 2) == 5  # grouped by 2, it took 6
    assert search_task_blocks(32, 2) == 1 and search_task_blocks(33, 2) == 2
    assert search_task_blocks(489, 2.0) == 16 and waves(489, 2) <= -(-489 // 2) + 16
    assert search_task_blocks(0, 2) == 1 and search_task_blocks(5, 0.5) == 1
