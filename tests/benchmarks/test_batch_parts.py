"""``benchmarks.batch --parts``: a partial run keeps the other parts' figures, dated."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.batch import PARTS, CpuTimeline, keep_other_parts, pairs_outputs_window, part_of


def _previous(path: Path, with_parts: bool) -> None:
    record = {
        "date": "2026-11-24T22:21:58Z", "machine": {"cpu": "old"},
        "figures": {"throughput_ratio": 0.93, "raw_text_rows_s": 356.6, "er_f1": 0.75,
                    "er_f1_by_dataset": {"Abt-Buy": 0.87}, "peak_anon_mb_100k": 878.7,
                    "pairs_rows_s_1m": 300.0, "quick": False, "seconds": 1470.6},
        "details": {"throughput": {"text_only": {}}, "memory": {"100000": {}}, "er": {"Abt-Buy": {}},
                    "embedding_model": "minilm"},
    }
    if with_parts:
        record["details"]["parts"] = {p: {"date": f"{p}-date", "machine": {"cpu": p}} for p in PARTS}
    path.write_text(json.dumps(record))


def test_each_figure_belongs_to_one_part() -> None:
    assert part_of("throughput_ratio") == "throughput"
    assert part_of("end_to_end_ratio_image") == "throughput"
    assert part_of("peak_anon_mb_1m") == "memory"
    assert part_of("workers_peak_anon_mb_100k") == "memory"
    assert part_of("er_f1_by_dataset") == "er"
    assert part_of("seconds") is None
    assert part_of("driver_cpu_share") == "throughput"
    assert part_of("driver_cpu_share_100k") == "memory"


def test_cpu_window_splits_the_driver_from_rays_processes() -> None:
    """CPU in a window: each process's last sample at or before each end (0 before it was seen)."""
    t = CpuTimeline(driver=10)
    t.kinds.update({20: "worker", 30: "daemon"})
    t.samples = [(0.0, {10: 1.0, 30: 5.0}), (1.0, {10: 1.5, 20: 0.5, 30: 5.2}),
                 (2.0, {10: 1.7, 20: 2.5, 30: 5.3}), (3.0, {10: 9.0, 20: 9.0, 30: 9.0})]
    got = t.window(0.5, 2.5)
    assert got["driver_cpu_s"] == 0.7 and got["workers_cpu_s"] == 2.5 and got["daemons_cpu_s"] == 0.3
    assert got["driver_cpu_share"] == round(0.7 / 3.5, 4)
    assert pairs_outputs_window(100.0, {"extract_s": 5.0, "catalogue_s": 1.0}, 20.0) == (106.0, 120.0)


def test_a_memory_run_keeps_throughput_and_er_from_the_previous_file(tmp_path: Path) -> None:
    prev = tmp_path / "batch.json"
    _previous(prev, with_parts=False)
    now = {"date": "2026-11-29T12:00:00Z", "machine": {"cpu": "new"}}
    figures = {"peak_anon_mb_1m": 1100.0, "quick": False, "seconds": 9.0}
    details = {"memory": {"1000000": {}}, "parts": {"memory": now}}
    merged, kept = keep_other_parts(figures, details, {"memory"}, prev)
    # the old memory figures go (a rerun part replaces all of its figures), the others stay
    assert "peak_anon_mb_100k" not in merged and "pairs_rows_s_1m" not in merged
    assert merged["peak_anon_mb_1m"] == 1100.0 and merged["seconds"] == 9.0
    assert merged["throughput_ratio"] == 0.93 and merged["er_f1_by_dataset"] == {"Abt-Buy": 0.87}
    assert kept["memory"] == {"1000000": {}} and kept["er"] == {"Abt-Buy": {}}
    assert kept["embedding_model"] == "minilm"
    # without a parts record the old file's own date and machine date its parts
    assert kept["parts"]["memory"] == now
    assert kept["parts"]["er"] == {"date": "2026-11-24T22:21:58Z", "machine": {"cpu": "old"}}


def test_parts_dates_carry_over_from_a_file_that_records_them(tmp_path: Path) -> None:
    prev = tmp_path / "batch.json"
    _previous(prev, with_parts=True)
    now = {"date": "now", "machine": {"cpu": "new"}}
    merged, kept = keep_other_parts({"er_f1": 0.8}, {"er": {}, "parts": {"er": now}},
                                    {"er"}, prev)
    assert merged["er_f1"] == 0.8 and "er_f1_by_dataset" not in merged
    assert kept["parts"] == {"er": now, "memory": {"date": "memory-date", "machine": {"cpu": "memory"}},
                             "throughput": {"date": "throughput-date",
                                            "machine": {"cpu": "throughput"}}}


def test_without_a_previous_file_only_the_parts_run_are_written(tmp_path: Path) -> None:
    merged, kept = keep_other_parts({"er_f1": 0.8}, {"parts": {}}, {"er"}, tmp_path / "none.json")
    assert merged == {"er_f1": 0.8} and kept == {"parts": {}}
