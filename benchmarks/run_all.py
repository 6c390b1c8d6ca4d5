"""``make bench``: run every benchmark in ``benchmarks/``, then refresh the README's figures table.

Every module here with a ``__main__`` block is a benchmark (``common`` and this one excepted): the
ones named in :data:`HEADLINES` first, in that order, then any other alphabetically, so a new
benchmark joins ``make bench`` by being added. Each runs in its own process (so one's memory does
not weigh on the next) and a full run writes ``benchmarks/results/NAME.json``; the table between the
``bench-table`` markers of README.md is rebuilt from those files, each row with the machine and the
date of its run (a benchmark that failed keeps its last results, and so its older date).

``python -m benchmarks.run_all --quick`` runs each one's ``--quick`` (under a minute each, nothing
written); ``--only NAME`` runs one; ``--table`` only rebuilds the README's table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- BEGIN bench-table -->", "<!-- END bench-table -->"

# The benchmarks, in the order they run, with the figures the README shows for each.
HEADLINES: dict[str, tuple[str, ...]] = {
    "content_rules": ("contact_f1_url", "contact_f1_email", "contact_f1_phone", "sms_spam_flag_rate",
                      "sms_ham_flag_rate"),
    "embedding": ("int8_speedup_vs_st", "int8_mean_cosine", "int8_latency_speedup_vs_st"),
    "images": ("image_recall_shipped", "image_precision_shipped", "image_copies", "image_false_pairs",
               "oracle_sscd_recall_at_p0995", "local_features_ms", "sscd_regions_ms", "verify_ms_per_pair"),
    "index": ("recall_at_10", "speedup_vs_exact", "bytes_per_vector_total", "pdq_bytes_per_hash_total",
              "pdq_lookup_p99_ms"),
    "er_pairs": ("er_f1_shipped", "er_f1_cosine_baseline", "er_catalogue_precision",
                 "er_catalogue_precision_cosine_same_recall", "er_catalogue_recall", "ml_listing_f1_shipped",
                 "ml_listing_f1_cosine_baseline", "ml_bait_copies_found"),
    "batch": ("throughput_text_rows_s", "throughput_image_rows_s", "throughput_ratio", "end_to_end_ratio",
              "peak_anon_mb_100k", "peak_anon_mb_1m", "er_f1", "er_f1_cosine_baseline"),
    "publishing": ("redis_events_s", "webhook_events_s", "delivery_p50_ms_redis", "delivery_p99_ms"),
    "index_shards": ("p50_ms_whole", "p50_ms_split", "split_ratio_p50"),
    "report": ("report_lines_per_s", "report_cpu_s", "report_total_s", "report_peak_rss_mb", "report_html_kb",
               "signal_lines"),
    "latency": ("p50_ms_c1", "p99_ms_c1", "throughput_rps_c16", "overhead_ratio", "throughput_ratio_16",
                "errors", "freshness_ms", "deep_tier_slowdown"),
    "review_writes": ("p50_ms_small", "p50_ms_big_product", "p50_ms_heavy_reviewer"),
    "reviews": ("yelp_zip_auc", "yelp_zip_auc_linear", "yelp_zip_auc_seeded", "yelp_zip_auc_seeded_baseline",
                "op_spam_accuracy", "farm_reviewer_ap", "farm_reviewer_ap_learned",
                "farm_reviewer_ap_best_single"),
}


SKIP = {"common", "run_all"}
SHOWN_BY_DEFAULT = 6
"""Figures shown for a benchmark missing from HEADLINES: its first scalar ones."""


def discover(directory: Path = ROOT / "benchmarks") -> list[str]:
    """The benchmark modules in ``directory``: HEADLINES' order first, then the rest by name."""
    found = {p.stem for p in directory.glob("*.py")
             if p.stem not in SKIP and not p.stem.startswith("_")
             and '__name__ == "__main__"' in p.read_text(encoding="utf-8")}
    return [n for n in HEADLINES if n in found] + sorted(found - set(HEADLINES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick (writes nothing)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run only these")
    parser.add_argument("--table", action="store_true", help="only rebuild the README table from results/")
    args = parser.parse_args(argv)
    if args.table:
        refresh_readme()
        return 0
    names = discover()
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)} (there are: {', '.join(names)})")
    failed = []
    for name in names:
        if args.only and name not in args.only:
            continue
        print(f"== benchmarks.{name}" + (" --quick" if args.quick else ""), flush=True)
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append(name)
    if not args.quick:
        refresh_readme()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def table(results: Path = RESULTS_DIR) -> str:
    """The README's figures table, built from ``results/*.json``: HEADLINES' figures of each benchmark
    (the first scalar ones for another), the machine and the date of its run."""
    rows = ["| benchmark | figures | machine | date |", "|---|---|---|---|"]
    found = sorted(p.stem for p in results.glob("*.json"))
    for name in [n for n in HEADLINES if n in found] + [n for n in found if n not in HEADLINES]:
        rec = json.loads((results / f"{name}.json").read_text())
        figs = rec.get("figures", {})
        keys = HEADLINES.get(name) or tuple(k for k, v in figs.items()
                                            if isinstance(v, int | float | str))[:SHOWN_BY_DEFAULT]
        shown = ", ".join(f"`{k}` {_fmt(figs[k])}" for k in keys if k in figs)
        m = rec.get("machine", {})
        rows.append(f"| `{name}` | {shown} | {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
                    f"| {str(rec.get('date', '?'))[:10]} |")
    return "\n".join(rows)


def _fmt(v: object) -> str:
    if v is None:  # a headline the run did not measure (its results file says why)
        return "not measured"
    if isinstance(v, float):
        # scores under 1 (AUCs, APs, shares) at 4 significant digits: 3 would show 0.8799 as
        # 0.88, the goal it misses
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def refresh_readme(readme: Path = README, results: Path = RESULTS_DIR) -> None:
    """Replace what lies between the README's table markers (nothing else is touched)."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} lacks the {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    os.replace(tmp, readme)


if __name__ == "__main__":
    sys.exit(main())
