"""``benchmarks.report``'s synthetic run is what the report reads (no timing here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import synth_run
from serving.report.build import build_report
from serving.report.inputs import from_files


def test_synthetic_run_reads_as_a_batch_run(tmp_path: Path) -> None:
    signals, labels, lines = synth_run(tmp_path / "run", 200)
    assert lines == sum(1 for _ in signals.open())
    inputs = from_files(signals, labels)
    listings = [k for k in inputs.judged if k[1] == "listing"]
    assert 0 < len(listings) < 200 and any(k[1] == "seller" for k in inputs.judged)  # sellers via listings
    report = build_report(inputs, 0.9)
    assert len(report.shadow) == 2 and {f.values.name for f in report.signals} >= {"near_duplicate.count",
                                                                                   "seller.cluster_count"}
