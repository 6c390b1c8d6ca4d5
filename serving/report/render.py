"""The report as files: ``report.html`` (one self-contained page), ``report.json``, ``plots/*.png``.

The page is for a risk PM, not an engineer: a sortable table of the signals at their operating
threshold, what each signal means (from the catalogue), the counts behind every ratio, a
95 % interval and a plain note where too few labels make a figure unreliable, and per signal a
precision-recall curve and the score histograms by label. The PNGs are embedded as ``data:``
URIs and the table sorts with a few lines of inline script: no network, no CDN.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from serving.report.build import MAX_ROWS, Report, SignalFigures, row_json, signal_json

_FRAUD, _LEGIT, _SHADOW = "#c0392b", "#2e86c1", "#8e44ad"


def _figure(width: float = 4.2, height: float = 3.0) -> Any:
    # The object API with the Agg canvas: no pyplot, no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def pr_plot(f: SignalFigures, other: SignalFigures | None = None) -> bytes:
    """Precision against recall over the thresholds (the operating point marked)."""
    fig = _figure()
    ax = fig.add_subplot()
    for g, colour, name in ((f, _FRAUD if other is None else "#2c3e50", "live" if other else None),
                            (other, _SHADOW, "shadow")):
        if g is None:
            continue
        c = g.curve
        if len(c.thresholds) and c.positives:
            ax.plot(c.recall, c.precision, marker=".", color=colour, label=name)
            if g.operating is not None:
                ax.plot([c.recall[g.operating]], [c.precision[g.operating]], "o", ms=9, mfc="none",
                        color=colour)
    if f.curve.labelled:
        ax.axhline(f.curve.base_rate, color="grey", ls=":", lw=1, label="base rate")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("recall (share of fraud caught)")
    ax.set_ylabel("precision")
    ax.set_title("precision vs recall", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def histogram_plot(f: SignalFigures) -> bytes:
    """The signal's values on fraud and on legit entities (absent values left out)."""
    fig = _figure()
    ax = fig.add_subplot()
    present = ~np.isnan(f.v)
    vals = f.sign * f.v[present]
    if len(vals):
        distinct = np.unique(vals)
        if len(distinct) <= 12:
            x = np.arange(len(distinct))
            for k, (mask, colour, name) in enumerate(((f.y[present], _FRAUD, "fraud"),
                                                      (~f.y[present], _LEGIT, "legit"))):
                counts = [int(((vals == d) & mask).sum()) for d in distinct]
                ax.bar(x + (k - 0.5) * 0.4, counts, width=0.4, color=colour, label=name)
            ax.set_xticks(x, [f"{d:g}" for d in distinct], fontsize=7)
        else:
            bins = np.linspace(float(vals.min()), float(vals.max()), 25)
            ax.hist([vals[f.y[present]], vals[~f.y[present]]], bins=bins, color=[_FRAUD, _LEGIT],
                    label=["fraud", "legit"], alpha=0.8)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no values on labelled entities", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("value")
    ax.set_ylabel("labelled entities")
    ax.set_title("values by label", fontsize=10)
    return _png(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if pct:
        return f"{100 * float(x):.1f} %"
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return html.escape(str(x))


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f' <span class="ci">[{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]</span>'


def _money(d: dict[str, float]) -> str:
    return ", ".join(f"{v:,.0f} {html.escape(k or '?')}" for k, v in sorted(d.items()) if v) or "0"


def _td(text: str, sort: Any = None) -> str:
    key = "" if sort is None else f' data-sort="{html.escape(str(sort))}"'
    return f"<td{key}>{text}</td>"


def _num_sort(x: Any) -> float:
    return -1.0 if x is None else float(x)


def _row_cells(row: dict[str, Any], parties: str | None, sign: float) -> str:
    counts = f'{row["flagged"]} <span class="ci">({row["tp"]} fraud, {row["fp"]} legit)</span>'
    cells = [
        _td(("&le; " if sign < 0 else "&ge; ") + _fmt(row["threshold"]), row["threshold"]),
        _td(counts, row["flagged"]),
        _td(_fmt(row["precision"], True) + _ci(row["precision_ci95"]), _num_sort(row["precision"])),
        _td(_fmt(row["recall"], True) + _ci(row["recall_ci95"]), _num_sort(row["recall"])),
        _td(_fmt(row["lift"]), _num_sort(row["lift"])),
        _td(_fmt(row["fpr"], True), _num_sort(row["fpr"])),
        _td(_fmt(row["coverage"], True), _num_sort(row["coverage"])),
    ]
    if row["money_caught"] or row["money_held"]:
        cells += [_td(_money(row["money_caught"]), sum(row["money_caught"].values())),
                  _td(_money(row["money_held"]), sum(row["money_held"].values()))]
    else:  # no price or loss known for any labelled entity of this type
        cells += [_td("n/a", -1), _td("n/a", -1)]
    if parties is not None and "honest_parties_affected" in row:
        share = _fmt(row["honest_parties_share"], True)
        hit = row["honest_parties_affected"]
        who = parties if hit != 1 else parties[:-1]
        cells.append(_td(f"{hit} {who} ({share})", hit))
    else:
        cells.append(_td("n/a", -1))
    return "".join(cells)


_HEAD = ("<th>threshold</th><th>flagged</th><th>precision</th><th>recall</th><th>lift</th>"
         "<th>false-positive rate</th><th>coverage</th><th>fraud value caught</th>"
         "<th>honest value held</th><th>honest sellers / buyers hit</th>")

_INTRO = (
    "<p>Each signal is judged against outcome labels (an entity confirmed <b>fraud</b> or <b>legit</b>; "
    "its latest label counts, and a listing's or review's label also judges its seller, reviewer or "
    "product). A signal <i>flags</i> an entity when its value is at or above a threshold (at or below, "
    "for account ages). <b>Precision</b>: of the flagged, the share that is fraud. <b>Recall</b>: of the "
    "fraud, the share flagged. <b>Lift</b>: precision over the base rate of fraud among the labelled. "
    "<b>Coverage</b>: the share of labelled entities flagged. Money: listing prices, or the loss a label "
    "states. The <b>operating threshold</b> is the lowest reaching precision {target:g} (else the best "
    "F1). Brackets are 95 % intervals: wide ones mean too few labels.</p>")

_SHADOW_INTRO = (
    "<h2>Shadow candidates beside the live signals</h2><p>Each candidate (shadow) signal is compared "
    "with the live signal of the same name on the same labelled entities, at the same coverage: at "
    "some of the live signal's thresholds, the candidate's threshold that flags as many entities or just "
    "fewer, and at the candidate's own operating threshold, the live one matched the same way. Better "
    "precision and recall at the same coverage mean the candidate catches more fraud for the same review "
    "load.</p>")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 6px;
text-align:right}th{background:#f4f6f8;cursor:pointer;user-select:none}td:first-child,th:first-child{text-align:left}
.ci{color:#777;font-size:11px}
.note{background:#fff6e0;border-left:3px solid #e0a800;padding:4px 8px;margin:4px 0;font-size:13px}
.shadow{color:#8e44ad}.plots img{margin-right:12px;border:1px solid #eee}
.muted{color:#666;font-size:13px}th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){ h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny
              : String(x === undefined ? a.cells[col].textContent : x).localeCompare(
                  String(y === undefined ? b.cells[col].textContent : y));
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _header(report: Report, data: dict[str, Any]) -> list[str]:
    labels = data["labels"]
    window = ""
    if data["since"] or data["until"]:
        window = f'; signals observed from {data["since"] or "the start"} to {data["until"] or "now"}'
    rows = [f"<tr><td>{html.escape(k)}</td><td>{v['fraud']}</td><td>{v['legit']}</td>"
            f"<td>{v['implied']}</td></tr>" for k, v in labels["by_entity_type"].items()]
    return [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>MarketGuard signal report</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>MarketGuard: what each signal catches, and at what cost</h1>",
        f"<p class=muted>From {html.escape(report.inputs.origin)}; generated {data['generated_at']}"
        f"{window}</p>",
        _INTRO.format(target=report.target_precision),
        "<h2>Labels</h2><table><thead><tr><th>entity type</th><th>fraud</th><th>legit</th>"
        "<th>judged through their items</th></tr></thead><tbody>", *rows, "</tbody></table>",
        f"<p class=muted>{labels['read']} labels read, {labels['superseded']} superseded by a later label of "
        "the same entity.</p>",
    ]


def _signals_table(data: dict[str, Any], by_id: dict[str, SignalFigures]) -> list[str]:
    parts = ["<h2>Signals at their operating threshold</h2><p class=muted>Click a column to sort.</p>",
             "<table class=sortable id=signals><thead><tr><th>signal</th><th>entity</th><th>source</th>"
             f"<th>labelled (fraud)</th>{_HEAD}</tr></thead><tbody>"]
    for s in data["signals"]:
        f = by_id[s["id"]]
        name = (f'<a href="#{_slug(s["id"])}">{html.escape(s["name"])}</a>'
                + (" <span class=shadow>(shadow)</span>" if s["shadow"] else "")
                + (" &#9888;" if s["notes"] else ""))
        op = s["operating"]
        cells = _row_cells(op, f.parties, f.sign) if op else "".join(_td("n/a", -1) for _ in range(10))
        counts = f"{s['labelled']} ({s['fraud']})"
        source = html.escape(s["source"]) + (f' <span class=ci>(max of {s["rolled_up_from"]}s)</span>'
                                             if s["rolled_up_from"] else "")
        parts.append(f'<tr>{_td(name, s["name"])}{_td(html.escape(s["entity_type"]))}'
                     f'{_td(source, s["source"])}{_td(counts, s["labelled"])}{cells}</tr>')
    parts.append("</tbody></table>")
    return parts


def _pct_n(x: Any, k: int, n: int) -> str:
    return f"{_fmt(x, True)} <span class=ci>({k}/{n})</span>"


def _shadow_section(report: Report, by_id: dict[str, SignalFigures], plots: Path) -> list[str]:
    if not report.shadow:
        return []
    parts = [_SHADOW_INTRO]
    for cmp in report.shadow:
        live, shadow = by_id[cmp["live"]], by_id[cmp["shadow"]]
        parts.append(f'<h3>{html.escape(cmp["name"])} ({html.escape(cmp["entity_type"])}): '
                     f"{html.escape(live.values.source)} vs <span class=shadow>"
                     f"{html.escape(shadow.values.source)}</span></h3>"
                     f'<p class=muted>{cmp["labelled"]} labelled, {cmp["fraud"]} fraud.</p>'
                     "<table class=sortable><thead><tr><th>matched at</th><th>coverage</th>"
                     "<th>live threshold</th><th>live coverage</th><th>live precision</th>"
                     "<th>live recall</th><th>shadow threshold</th><th>shadow coverage</th>"
                     "<th>shadow precision</th><th>shadow recall</th></tr></thead><tbody>")
        for p in cmp["points"]:
            parts.append(
                "<tr>" + _td(html.escape(p["matched_on"]), p["matched_on"])
                + _td(_fmt(p["coverage"], True), _num_sort(p["coverage"]))
                + _td(_fmt(p["live_threshold"]), _num_sort(p["live_threshold"]))
                + _td(_fmt(p["live_coverage"], True), _num_sort(p["live_coverage"]))
                + _td(_pct_n(p["live_precision"], p["live_tp"], p["live_flagged"]),
                      _num_sort(p["live_precision"]))
                + _td(_fmt(p["live_recall"], True), _num_sort(p["live_recall"]))
                + _td(_fmt(p["shadow_threshold"]), _num_sort(p["shadow_threshold"]))
                + _td(_fmt(p["shadow_coverage"], True), _num_sort(p["shadow_coverage"]))
                + _td(_pct_n(p["shadow_precision"], p["shadow_tp"], p["shadow_flagged"]),
                      _num_sort(p["shadow_precision"]))
                + _td(_fmt(p["shadow_recall"], True), _num_sort(p["shadow_recall"])) + "</tr>")
        png = pr_plot(live, shadow)
        (plots / f"shadow-{_slug(cmp['shadow'])}.png").write_bytes(png)
        parts.append(f"</tbody></table><div class=plots>{_img(png, 'shadow vs live ' + cmp['name'])}</div>")
    return parts


def _groups_table(title: str, groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return []
    parts = [f"<p><b>{title}</b>, at the operating threshold:</p><table class=sortable><thead><tr>"
             "<th>group</th><th>labelled (fraud)</th><th>flagged</th><th>precision</th>"
             "<th>recall</th><th>note</th></tr></thead><tbody>"]
    for g in groups:
        counts = f"{g['labelled']} ({g['fraud']})"
        parts.append(
            "<tr>" + _td(html.escape(g["group"]), g["group"]) + _td(counts, g["labelled"])
            + _td(str(g["flagged"]), g["flagged"])
            + _td(_fmt(g["precision"], True) + _ci(g["precision_ci95"]), _num_sort(g["precision"]))
            + _td(_fmt(g["recall"], True) + _ci(g["recall_ci95"]), _num_sort(g["recall"]))
            + _td(html.escape(g["note"] or ""), g["note"] or "") + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _signal_section(f: SignalFigures, target: float, plots: Path) -> list[str]:
    s = signal_json(f, target)
    slug = _slug(f.id)
    pr, hist = pr_plot(f), histogram_plot(f)
    (plots / f"{slug}-pr.png").write_bytes(pr)
    (plots / f"{slug}-hist.png").write_bytes(hist)
    etype = html.escape(f.values.entity_type)
    shadow = " <span class=shadow>shadow</span>" if f.values.shadow else ""
    parts = [
        f'<h3 id="{slug}">{html.escape(f.values.name)} <span class=muted>{etype}, '
        f"{html.escape(f.values.source)}</span>{shadow}</h3><p>{html.escape(f.description)}.</p>",
        f'<p class=muted>{s["labelled"]} labelled {etype}s ({s["fraud"]} fraud, {s["legit"]} legit; '
        f'base rate {_fmt(s["base_rate"], True)}), {s["present"]} carry the signal. Fraud value labelled: '
        f'{_money(s["money_fraud_total"])}; honest value: {_money(s["money_legit_total"])}. Operating '
        f'threshold: {html.escape(s["operating_rule"])}.</p>',
        *(f"<div class=note>{html.escape(n)}</div>" for n in s["notes"]),
        f"<div class=plots>{_img(pr, 'PR curve ' + f.id)}{_img(hist, 'histogram ' + f.id)}</div>",
        f"<table class=sortable><thead><tr>{_HEAD}</tr></thead><tbody>",
    ]
    rows = f.curve.rows(MAX_ROWS)
    if not rows:
        parts[-1] = ("<p class=muted>No labelled entity has a value that could flag it (above 0): there "
                     "is no threshold to show.</p>")
    else:
        parts += [f"<tr>{_row_cells(row_json(f, r), f.parties, f.sign)}</tr>" for r in rows]
        parts.append("</tbody></table>")
    if len(rows) < len(f.curve.thresholds):
        parts.append(f"<p class=muted>{len(rows)} of {len(f.curve.thresholds)} thresholds shown; "
                     "all are in report.json.</p>")
    return parts + _groups_table("By tenant", s["by_tenant"]) + _groups_table("By category", s["by_category"])


def render(report: Report, out: Path) -> Path:
    """Write ``report.html``, ``report.json`` and ``plots/`` under ``out``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    data = report.to_json()
    (out / "report.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    by_id = {f.id: f for f in report.signals}
    parts = _header(report, data) + _signals_table(data, by_id) + _shadow_section(report, by_id, plots)
    parts.append("<h2>Each signal</h2>")
    for f in report.signals:
        parts += _signal_section(f, report.target_precision, plots)
    parts.append(f"<script>{_SCRIPT}</script></body></html>\n")
    page = out / "report.html"
    page.write_text("".join(parts), encoding="utf-8")
    return page
