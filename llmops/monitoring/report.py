"""Drift reports: a self-contained HTML page (summary table, a plot per column) and JSON."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from llmops.monitoring.engine import ColumnResult, DriftResult


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return f"{value:.{digits}g}"


def _plot(col: ColumnResult) -> str:
    """A PNG (base64) of reference vs current for one column, or '' when there is no data."""
    if not col.plot:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.4), dpi=80)
    if "edges" in col.plot:
        edges = col.plot["edges"]
        width = edges[1] - edges[0]
        ax.bar(edges[:-1], col.plot["reference"], width=width, align="edge", alpha=0.55,
               label="reference", color="#4c72b0")
        ax.bar(edges[:-1], col.plot["current"], width=width, align="edge", alpha=0.55,
               label="current", color="#dd8452")
    else:
        cats = [c[:14] for c in col.plot["categories"]]
        x = range(len(cats))
        ax.bar([i - 0.2 for i in x], col.plot["reference"], width=0.4, label="reference", color="#4c72b0")
        ax.bar([i + 0.2 for i in x], col.plot["current"], width=0.4, label="current", color="#dd8452")
        ax.set_xticks(list(x), cats, rotation=45, ha="right", fontsize=7)
    ax.set_title(col.column, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f3f3f3}.drift{background:#fde2e1}.ok{background:#e6f4ea}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;display:inline-block}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;border-radius:6px;padding:6px}
"""


def render_html(result: DriftResult, title: str = "Drift report") -> str:
    """The report as one HTML string with plots embedded as data URIs."""
    if result.dataset_drift is None:
        banner = ("invalid input: no verdict", "#fff3cd")
    elif result.dataset_drift:
        banner = (f"DATASET DRIFT: {result.n_drifted} of {result.n_columns} columns drifted", "#fde2e1")
    else:
        banner = (f"no dataset drift: {result.n_drifted} of {result.n_columns} columns drifted", "#e6f4ea")
    rows = []
    cards = []
    columns = list(result.columns) + ([result.prediction_drift] if result.prediction_drift else [])
    for c in columns:
        name = html.escape(c.column) + (" (prediction)" if c is result.prediction_drift else "")
        rows.append(
            f"<tr class={'drift' if c.drifted else 'ok'}><td>{name}</td><td>{c.kind}</td>"
            f"<td>{c.test}</td><td>{_fmt(c.statistic)}</td><td>{_fmt(c.p_value)}</td>"
            f"<td>{_fmt(c.threshold)}</td><td>{'yes' if c.drifted else 'no'}</td>"
            f"<td>{c.missing_share_reference:.1%} / {c.missing_share_current:.1%}</td>"
            f"<td>{html.escape(c.reason)}</td></tr>"
        )
        png = _plot(c)
        if png:
            cards.append(f"<div class=card><img alt='{html.escape(c.column)}' "
                         f"src='data:image/png;base64,{png}'></div>")
    schema = result.schema
    schema_items = []
    for key, label in (("missing_columns", "missing in current"), ("added_columns", "added in current"),
                       ("unknown_columns", "configured but not in reference")):
        if schema.get(key):
            schema_items.append(f"<li>{label}: {html.escape(', '.join(schema[key]))}</li>")
    for change in schema.get("dtype_changes", []):
        schema_items.append(f"<li>dtype of {html.escape(change['column'])}: "
                            f"{change['reference']} &rarr; {change['current']}</li>")
    for problem in schema.get("problems", []):
        schema_items.append(f"<li>{html.escape(problem)}</li>")
    schema_html = "<ul>" + "".join(schema_items) + "</ul>" if schema_items else "<p>no schema problems</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class=banner style="background:{banner[1]}">{html.escape(banner[0])}</p>
<p>reference rows: {result.reference_rows:,} &middot; current rows: {result.current_rows:,} &middot;
share drifted: {result.share_drifted:.1%} (dataset drift from {result.drift_share:.0%})</p>
<h2>Schema</h2>{schema_html}
<h2>Columns</h2>
<table><tr><th>column</th><th>type</th><th>test</th><th>statistic</th><th>p-value</th>
<th>threshold</th><th>drifted</th><th>missing ref / cur</th><th>reason</th></tr>
{''.join(rows)}</table>
<h2>Distributions (reference vs current)</h2><div class=grid>{''.join(cards)}</div>
</body></html>"""


def write_report(result: DriftResult, out_dir: str | Path, title: str = "Drift report") -> tuple[Path, Path]:
    """Write ``drift_report.html`` and ``drift_report.json`` atomically; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("drift_report.json", json.dumps(result.to_json(), indent=2)),
                       ("drift_report.html", render_html(result, title))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
        paths.append(out / name)
    return paths[1], paths[0]
