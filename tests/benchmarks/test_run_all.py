"""``make bench``'s README table, built from sample result files (no benchmark is run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run_all import BEGIN, END, discover, refresh_readme, table


def _result(folder: Path, name: str, figures: dict[str, object], date: str, cpu: str = "AMD EPYC") -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({
        "benchmark": name, "date": date, "machine": {"cpu": cpu, "cores": 2},
        "figures": figures}))


def test_table_rows_carry_headline_figures_machine_and_date(tmp_path: Path) -> None:
    res = tmp_path / "results"
    _result(res, "latency", {"p50_ms_c1": 307.4, "p99_ms_c1": 631.0, "errors": 0, "not_a_headline": 1},
            "2026-11-30T15:23:57Z")
    _result(res, "publishing", {"redis_events_s": 6077.5, "webhook_events_s": None}, "2026-11-29T10:00:00Z",
            cpu="Intel Xeon")
    _result(res, "zz_new", {"a": 1.23456, "b": "x", "c": [1, 2], "d": 2, "e": 3, "f": 4, "g": 5, "h": 6},
            "2026-12-01T00:00:00Z")
    assert table(res).splitlines() == [
        "| benchmark | figures | machine | date |",
        "|---|---|---|---|",
        "| `publishing` | `redis_events_s` 6,078, `webhook_events_s` not measured | Intel Xeon, 2 cores "
        "| 2026-11-29 |",
        "| `latency` | `p50_ms_c1` 307, `p99_ms_c1` 631, `errors` 0 | AMD EPYC, 2 cores | 2026-11-30 |",
        # a benchmark not in HEADLINES: its first six scalar figures
        "| `zz_new` | `a` 1.23, `b` x, `d` 2, `e` 3, `f` 4, `g` 5 | AMD EPYC, 2 cores | 2026-12-01 |",
    ]


def test_scores_under_one_keep_four_digits() -> None:
    """0.8799 against a goal of 0.88 must not read as 0.88."""
    from benchmarks.run_all import _fmt

    assert [_fmt(x) for x in (0.8799, 0.906, 0.0138, 1.082, 61.94, 6077.5)] == [
        "0.8799", "0.906", "0.0138", "1.08", "61.9", "6,078"]


def test_refresh_replaces_only_the_marked_block(tmp_path: Path) -> None:
    res = tmp_path / "results"
    _result(res, "index", {"recall_at_10": 0.953}, "2026-11-24T00:00:00Z")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{BEGIN}\n| old | table |\n{END}\nafter\n")
    refresh_readme(readme, res)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "| old |" not in text and "`recall_at_10` 0.953" in text
    refresh_readme(readme, res)
    assert readme.read_text() == text  # idempotent
    readme.write_text("no markers")
    with pytest.raises(SystemExit):
        refresh_readme(readme, res)


def test_every_benchmark_module_is_run(tmp_path: Path) -> None:
    names = discover()
    assert names[:2] == ["content_rules", "embedding"] and "latency" in names
    assert "common" not in names and "run_all" not in names and "text_catalogue" not in names
    (tmp_path / "brand_new.py").write_text('if __name__ == "__main__":\n    pass\n')
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "latency.py").write_text('if __name__ == "__main__":\n    pass\n')
    assert discover(tmp_path) == ["latency", "brand_new"]
