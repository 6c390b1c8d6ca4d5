"""``make bench``: run every benchmark in full, then refresh the README's figures table.

Each benchmark runs in its own process (so one's memory does not weigh on the
next) and writes ``benchmarks/results/NAME.json``; the table between the
``bench-table`` markers of README.md is rebuilt from those files.
"""

from __future__ import annotations

import json
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
    "latency": ("p50_ms_c1", "p99_ms_c1", "throughput_rps_c16", "overhead_ratio", "throughput_ratio_16",
                "errors", "freshness_ms", "deep_tier_slowdown"),
}


def main() -> int:
    failed = []
    for name in HEADLINES:
        if not (ROOT / "benchmarks" / f"{name}.py").exists():
            continue
        print(f"== benchmarks.{name}", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=ROOT)
        if proc.returncode != 0:
            failed.append(name)
    refresh_readme()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def table() -> str:
    """The README's figures table, built from benchmarks/results/*.json."""
    rows = ["| benchmark | figures | machine | date |", "|---|---|---|---|"]
    for name, keys in HEADLINES.items():
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        figs = rec.get("figures", {})
        shown = ", ".join(f"`{k}` {_fmt(figs[k])}" for k in keys if k in figs)
        m = rec.get("machine", {})
        rows.append(f"| `{name}` | {shown} | {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
                    f"| {rec.get('date', '?')[:10]} |")
    return "\n".join(rows)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def refresh_readme() -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
