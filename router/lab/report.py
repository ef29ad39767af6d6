"""The lab's output: a table for people, JSON for scripts, a self-contained HTML page.

The HTML report needs no network and no other file: its data is a JSON literal in the
page, and its charts are drawn by the model page's own chart code
(``router/page/charts.js``), whose text is embedded in the page as it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources
from typing import Any

import orjson

from router.lab.figures import COMPARED


def to_json(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _fmt(path: str, value: Any) -> str:
    if value is None:
        return "-"
    if path.endswith("rate"):
        return f"{value:.2%}"
    if path.startswith(("ttft", "latency")):
        return f"{value:.1f} ms"
    if path == "cost_usd":
        return f"-${-value:.4f}" if value < 0 else f"${value:.4f}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _get(summary: dict[str, Any], path: str) -> Any:
    value: Any = summary
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def text(doc: dict[str, Any]) -> str:
    """The figures side by side (and the difference, comparing two configs)."""
    runs: Sequence[dict[str, Any]] = doc["runs"]
    lab = doc["lab"]
    head = [
        f"trace {lab['trace']}: {lab['requests']:,} requests replayed over "
        f"{lab['span_s']:.0f} s (rate {lab['rate']:g}x, seed {lab['seed']})",
        "",
    ]
    names = [r["config"] for r in runs]
    rows = [["", *names] + (["B - A"] if len(runs) == 2 else [])]
    for path, _ in COMPARED:
        row = [
            path.replace("_ms.", " ").replace("_", " "),
            *(_fmt(path, _get(r, path)) for r in runs),
        ]
        if len(runs) == 2:
            delta = doc["diff"][path]["delta"]
            row.append("-" if delta is None else ("+" if delta > 0 else "") + _fmt(path, delta))
        rows.append(row)
    endpoints = sorted({e for r in runs for e in r["share"]})
    for e in endpoints:
        shares = [r["share"].get(e, 0.0) for r in runs]
        row = [f"share {e}", *(f"{s:.1%}" for s in shares)]
        if len(runs) == 2:
            row.append(f"{shares[1] - shares[0]:+.1%}")
        rows.append(row)
    fleet = ["", "fleet (how each endpoint was modelled):"]
    for r in runs:
        for ep, how in sorted(r["fleet"].items()):
            fleet.append(f"  {r['config']}: {ep}: {how.get('source')}")
    return "\n".join([*head, _table(rows), *fleet]) + "\n"


def _asset(name: str) -> str:
    return resources.files(__package__ or "router.lab").joinpath(name).read_text("utf-8")


def _charts_js() -> str | None:
    """The model page's chart code, or None where it is not installed."""
    try:
        from router.page import asset

        return asset("charts.js").decode()
    except (ImportError, FileNotFoundError):
        return None


def _script(code: str) -> str:
    return "<script>" + code.replace("</script", "<\\/script") + "</script>"


def _figure_rows(doc: dict[str, Any]) -> str:
    """The figures table's rows, shares included; with two runs, B - A coloured by
    which did better."""
    runs: Sequence[dict[str, Any]] = doc["runs"]
    esc = html.escape
    rows = []
    for path, _ in COMPARED:
        cells = "".join(f"<td>{esc(_fmt(path, _get(r, path)))}</td>" for r in runs)
        if len(runs) == 2:
            d = doc["diff"][path]
            better = d["better"]
            cls = "" if better is None else (" class=better" if better == "b" else " class=worse")
            delta = d["delta"]
            shown = "-" if delta is None else ("+" if delta > 0 else "") + _fmt(path, delta)
            cells += f"<td{cls}>{esc(shown)}</td>"
        rows.append(f"<tr><td>{esc(path)}</td>{cells}</tr>")
    for e in sorted({e for r in runs for e in r["share"]}):
        shares = [r["share"].get(e, 0.0) for r in runs]
        cells = "".join(f"<td>{s:.1%}</td>" for s in shares)
        if len(runs) == 2:
            cells += f"<td>{shares[1] - shares[0]:+.1%}</td>"
        rows.append(f"<tr><td>share {esc(e)}</td>{cells}</tr>")
    return "".join(rows)


def _fleet_rows(runs: Sequence[dict[str, Any]]) -> str:
    esc = html.escape
    return "".join(
        f"<tr><td>{esc(r['config'])}</td><td class=text>{esc(ep)}</td>"
        f"<td class=text>{esc(str(how.get('source')))}</td>"
        f"<td class=text>{esc(_brief(how))}</td></tr>"
        for r in runs
        for ep, how in sorted(r["fleet"].items())
    )


def html_report(doc: dict[str, Any]) -> str:
    """The whole report as one HTML page: no outside request, no other file."""
    runs: Sequence[dict[str, Any]] = doc["runs"]
    lab = doc["lab"]
    esc = html.escape
    names = [r["config"] for r in runs]
    title = " vs ".join(names)
    share_charts = "".join(
        f"<div><h3>{esc(r['config'])}</h3><div id=share-{i}></div><div id=legend-{i}></div></div>"
        for i, r in enumerate(runs)
    )
    charts = _charts_js()
    data = orjson.dumps(doc).decode().replace("</", "<\\/")
    missing = (
        ""
        if charts is not None
        else "<p class=muted>Charts need the model page's chart code (router/page/charts.js), "
        "which this installation lacks.</p>"
    )
    diff_head = "<th>B - A</th>" if len(runs) == 2 else ""
    table_head = "".join(f"<th>{esc(n)}</th>" for n in names) + diff_head
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Policy lab: {esc(title)}</title>
<style>{_asset("report.css")}</style></head><body>
<h1>Policy lab: {esc(title)}</h1>
<p class=muted>Trace {esc(str(lab["trace"]))}: {lab["requests"]:,} requests over
{lab["span_s"]:.0f} s, replayed at {lab["rate"]:g}x with seed {lab["seed"]},
in virtual time through the router's own pipeline.</p>
<h2>Figures</h2>
<table><tr><th></th>{table_head}</tr>{_figure_rows(doc)}</table>
{missing}
<h2>TTFT and latency</h2>
<div class=charts><div><h3>TTFT</h3><div id=ttft_ms></div><div id=ttft_ms-legend></div></div>
<div><h3>Latency</h3><div id=latency_ms></div><div id=latency_ms-legend></div></div></div>
<h2>Each endpoint's share over time</h2>
<div class=charts>{share_charts}</div>
<h2>The fleet</h2>
<table><tr><th>config</th><th class=text>endpoint</th><th class=text>modelled as</th>
<th class=text>figures</th></tr>{_fleet_rows(runs)}</table>
<script type="application/json" id=lab-data>{data}</script>
{_script(charts or "")}
{_script(_asset("report.js"))}
</body></html>
"""


def _brief(how: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in how.items() if k != "source" and v is not None)
