"""Shared plumbing of the benchmarks: the machine and versions record, timing, output.

Every benchmark prints one JSON object as its last line and, on a full run, writes
``benchmarks/results/NAME.json`` with the machine, library versions and date next
to the figures (the contract's benchmark convention).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# One Wilson interval for the benchmarks and the report (serving may not import benchmarks).
from serving.report.metrics import wilson as wilson

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


_TITLE = re.compile(r"COL (?:title|name) VAL (.*?)(?: COL |$)")


def listing_titles(limit: int, pattern: str = "*test*") -> list[str]:
    """Distinct real product titles from ``listing_pairs/`` (Ditto's ``COL x VAL`` format).

    Files matching ``pattern`` are read in name order; lines are split on "\\n" only,
    since some WDC titles hold Unicode line separators.
    """
    out: dict[str, None] = {}
    for path in sorted((SHARED_DATA / "listing_pairs").rglob(pattern)):
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            for side in line.split("\t")[:2]:
                m = _TITLE.search(side)
                title = m.group(1).strip() if m else ""
                if title:
                    out.setdefault(title, None)
                    if len(out) >= limit:
                        return list(out)
    return list(out)


def parse_args(description: str) -> argparse.Namespace:
    """The flags every benchmark takes: ``--quick`` (under a minute, no results file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="small run, under a minute; does not write benchmarks/results/")
    return parser.parse_args()


def machine() -> dict[str, Any]:
    """CPU model, logical cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
            "os": platform.platform(), "python": sys.version.split()[0]}


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None where absent)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def finish(name: str, figures: dict[str, Any], *, quick: bool, packages: tuple[str, ...],
           details: dict[str, Any] | None = None) -> None:
    """Write the results file on a full run, then print the figures as the last line."""
    if not quick:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": name,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            "versions": versions(*packages),
            "figures": figures,
            "details": details or {},
        }
        tmp = RESULTS_DIR / f"{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, RESULTS_DIR / f"{name}.json")
    print(json.dumps(figures, sort_keys=True))
