"""``marketguard report`` at scale: how fast a batch run's ``signals.jsonl`` is judged, and its memory.

A synthetic run (the report reads files only, so no extractor is needed): ``n`` listings by
``n / 5`` sellers, 5 % of them fraud, each with six listing signals (counts, booleans and scores,
higher on fraud with overlap) and a shadow candidate of one of them, plus one roll-up per seller;
a label for 20 % of the listings. The run folder holds what a real one holds for the report
(``signals.jsonl``, ``manifest.json``, ``work/catalogue/meta.arrow``). Timed: reading the inputs
(streaming ``signals.jsonl``, keeping the labelled entities' values), building the figures,
rendering the page and its plots. Full run: 200k listings (1.4M signal lines); ``--quick``: 10k.
Wall and CPU seconds are both recorded (on a shared box the wall clock includes waiting for other
processes).
"""

from __future__ import annotations

import json
import random
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.common import finish, parse_args

PACKAGES = ("numpy", "matplotlib", "pyarrow")


def _line(etype: str, eid: str, name: str, value: float, source: str, at: str, shadow: bool = False) -> str:
    return json.dumps({"schema": "marketguard.signal/v1", "tenant": "default", "entity_type": etype,
                       "entity_id": eid, "name": name, "value": value, "score": None, "evidence": {},
                       "source": source, "shadow": shadow, "observed_at": at}) + "\n"


def synth_run(run: Path, n: int, seed: int = 7) -> tuple[Path, Path, int]:
    """Write a run folder and a labels file; returns (signals.jsonl, labels.jsonl, signal lines)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from serving.batch.catalogue import META_SCHEMA

    rng = random.Random(seed)
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"kind": "listings"}))
    cat = run / "work" / "catalogue"
    cat.mkdir(parents=True)
    sellers = max(1, n // 5)
    at = "2026-11-30T12:00:00Z"
    lines = 0
    fraud_sellers: set[int] = set()
    cols: dict[str, list[object]] = {f.name: [] for f in META_SCHEMA}
    with (run / "signals.jsonl").open("w", encoding="utf-8") as out, \
            (run.parent / "labels.jsonl").open("w", encoding="utf-8") as labels:
        for i in range(n):
            fraud = rng.random() < 0.05
            seller = rng.randrange(sellers)
            if fraud:
                fraud_sellers.add(seller)
            lid = f"L{i}"
            for k, v in (("tenant", "default"), ("entity_id", lid), ("owner", f"S{seller}"),
                         ("group", f"cat{i % 12}"), ("title", ""), ("text", ""),
                         ("price", float(rng.randint(5, 900))), ("currency", "GBP"), ("record", "{}"),
                         ("signals", "[]")):
                cols[k].append(v)
            lift = 2.5 if fraud else 0.0
            nd, cs, sim = "listing_near_duplicate@1", "content_rules@2", "near_duplicate.max_similarity"
            values = {
                ("near_duplicate.count", nd): max(0, int(rng.gauss(lift, 1.5))),
                ("near_duplicate.cross_seller_count", nd): max(0, int(rng.gauss(lift, 1))),
                (sim, nd): round(min(1.0, max(0.0, rng.gauss(0.5 + lift / 8, 0.2))), 4),
                ("content.offplatform_contact", cs): int(rng.random() < (0.6 if fraud else 0.03)),
                ("content.obfuscation", cs): round(max(0.0, rng.gauss(lift / 5, 0.3)), 4),
                ("price.anomaly", "price_anomaly@1"): round(min(1.0, max(0.0, rng.gauss(lift / 4, 0.25))), 4),
            }
            for (name, source), value in values.items():
                out.write(_line("listing", lid, name, value, source, at))
            candidate = int(rng.random() < (0.75 if fraud else 0.03))
            out.write(_line("listing", lid, "content.offplatform_contact", candidate,
                            "content_rules_candidate@2", at, shadow=True))
            lines += len(values) + 1
            if rng.random() < 0.2:
                labels.write(json.dumps({"entity_type": "listing", "entity_id": lid,
                                         "label": "fraud" if fraud else "legit"}) + "\n")
        for s in range(sellers):
            value = int(s in fraud_sellers) + int(rng.random() < 0.1)
            out.write(_line("seller", f"S{s}", "seller.cluster_count", value, "seller_rollup@1", at))
            lines += 1
    with ipc.new_file(str(cat / "meta.arrow"), META_SCHEMA) as w:
        w.write_table(pa.table(cols, schema=META_SCHEMA))
    return run / "signals.jsonl", run.parent / "labels.jsonl", lines


def main() -> None:
    args = parse_args((__doc__ or "report benchmark").splitlines()[0])
    from serving.report.build import build_report
    from serving.report.inputs import from_files
    from serving.report.render import render

    n = 10_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        signals, labels, lines = synth_run(Path(tmp) / "run", n)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c0 = time.process_time()  # CPU seconds too: on a shared box the wall clock waits for others
        t0 = time.perf_counter()
        inputs = from_files(signals, labels)
        t1 = time.perf_counter()
        report = build_report(inputs, 0.9)
        t2 = time.perf_counter()
        page = render(report, Path(tmp) / "out")
        t3 = time.perf_counter()
        cpu = time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        html_kb = page.stat().st_size / 1024
    figures = {
        "listings": n, "signal_lines": lines, "labelled": len(inputs.judged),
        "report_read_s": round(t1 - t0, 2), "report_build_s": round(t2 - t1, 2),
        "report_render_s": round(t3 - t2, 2), "report_total_s": round(t3 - t0, 2),
        "report_cpu_s": round(cpu, 2),
        "report_lines_per_s": round(lines / (t1 - t0)),
        "report_peak_rss_mb": round(rss / 1024, 1), "report_rss_growth_mb": round((rss - rss0) / 1024, 1),
        "report_html_kb": round(html_kb), "signals": len(report.signals), "shadow_pairs": len(report.shadow),
    }
    finish("report", figures, quick=args.quick, packages=PACKAGES)


if __name__ == "__main__":
    main()
