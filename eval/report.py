"""Evaluation reports: Markdown (CI log / PR comment), a self-contained HTML page with plots, and JSON.

HTML plots (PNG, embedded): score distributions per suite, the per-tag breakdown, and this version
against the baseline. Example::

    paths = write_reports(result, Path("reports/eval/default/smollm2"), cfg)
    print(paths["md"].read_text())
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from eval.gate import LOWER_IS_BETTER

SCORE_KEYS = ("token_f1", "rouge_l", "exact_match", "citation_precision", "judge_faithfulness",
              "judge_answer_relevancy", "judge_context_precision")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def to_json(result: Any, cfg: Any) -> dict[str, Any]:
    return {
        "name": result.name, "model_ref": result.model_ref, "served_model": result.model,
        "duration_s": round(result.duration_s, 2), "config": cfg.model_dump(mode="json"),
        "metrics": result.metrics,
        "suites": {n: {"kind": r.kind, "dataset": {"path": r.dataset.path, "sha256": r.dataset.sha256,
                                                   "rows": len(r.dataset.rows)},
                       "metrics": r.metrics, "failures": r.failures, "by_tag": r.by_tag, "wall_s": round(r.wall_s, 2),
                       "samples": r.per_sample} for n, r in result.suites.items()},
        "baseline": {k: v for k, v in result.baseline.items() if k != "samples"},
        "gate": {"passed": result.gate.passed, "outcome": result.gate.outcome, "failures": result.gate.failures,
                 "inconclusive": result.gate.inconclusive, "checks": result.gate.checks, "notes": result.gate.notes},
    }


def paired_cell(check: dict[str, Any] | None) -> str:
    """``+0.012 [-0.030, +0.051] n=40 pass`` for a paired check; '' when the metric was not compared."""
    if not check:
        return ""
    if check.get("kind") != "paired":
        return check.get("outcome") or ("pass" if check.get("ok") else "fail")
    if check.get("diff") is None:
        return f"{check['outcome']} (n={check.get('n', 0)})"
    return f"{check['diff']:+.3f} [{check['low']:+.3f}, {check['high']:+.3f}] n={check['n']} {check['outcome']}"


def _baseline_checks(gate: Any) -> dict[str, dict[str, Any]]:
    return {c["metric"]: c for c in gate.checks if c.get("kind") in ("paired", "baseline")}


def to_markdown(result: Any) -> str:
    lines = [f"## Evaluation `{result.name}`: {result.model_ref or result.model}", ""]
    gate = result.gate
    lines.append(f"**Gate: {gate.outcome.upper()}**"
                 + (f" (baseline {result.baseline.get('ref')})" if result.baseline.get("ref") else ""))
    lines += [f"- {f}" for f in gate.failures] + [f"- {i}" for i in gate.inconclusive]
    lines += [f"- note: {n}" for n in gate.notes]
    lines.append("")
    base = result.baseline.get("metrics") or {}
    checks = _baseline_checks(gate)
    confidence = next((c["confidence"] for c in checks.values() if c.get("confidence")), None)
    for name, r in result.suites.items():
        f = r.failures
        lines.append(f"### {name} ({r.kind}, {f['samples']} samples, {f['failed']} failed, {f['blocked']} blocked; "
                     f"dataset {Path(r.dataset.path).name} sha256 {r.dataset.sha256[:12]})")
        paired = f"paired diff [{confidence:.0%} CI]" if confidence else "compared"
        lines += ["", f"| metric | value | baseline | {paired} |", "|---|---|---|---|"]
        for k, v in r.metrics.items():
            lines.append(f"| {k} | {_fmt(v)} | {_fmt(base.get(f'{name}.{k}'))} | "
                         f"{paired_cell(checks.get(f'{name}.{k}'))} |")
        judged = {k: v for k, v in f.items() if k.startswith("judge_")}
        if judged:
            parts = [f"{k[6:-7]} {f[k]}/{f[k[:-7] + '_total']}" for k in judged if k.endswith("_failed")]
            lines.append(f"\nFailed judgements: {', '.join(parts)}")
        lines.append("")
    lines.append(f"_{result.duration_s:.0f} s; reports: eval_report.html / eval_report.json_")
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(result: Any) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for name, r in result.suites.items():
        keys = [k for k in SCORE_KEYS if any(isinstance(p.get(k), float) for p in r.per_sample)]
        if keys:
            fig, ax = plt.subplots(figsize=(5.5, 2.8), dpi=80)
            for k in keys:
                vals = [p[k] for p in r.per_sample if isinstance(p.get(k), float)]
                ax.hist(vals, bins=10, range=(0, 1), alpha=0.5, label=k)
            ax.set_title(f"{name}: score distributions", fontsize=9)
            ax.legend(fontsize=7)
            out.append((f"{name} distributions", _png(fig)))
        if r.by_tag:
            tags = list(r.by_tag)
            metrics = sorted({k for row in r.by_tag.values() for k in row if k != "n"})
            fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(tags)), 2.8), dpi=80)
            width = 0.8 / len(metrics)
            for j, metric in enumerate(metrics):  # a tag without the metric (no such rows) has no bar
                xs = [i for i, t in enumerate(tags) if metric in r.by_tag[t]]
                ax.bar([i + j * width - 0.4 + width / 2 for i in xs], [r.by_tag[tags[i]][metric] for i in xs],
                       width=width, label=metric)
            ax.set_xticks(range(len(tags)), [t[:14] for t in tags], rotation=45, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)
            ax.set_title(f"{name}: per tag", fontsize=9)
            out.append((f"{name} per tag", _png(fig)))
    base = result.baseline.get("metrics")
    if base:
        keys = [k for k in result.metrics if k in base and "latency" not in k and "tok_per_s" not in k]
        if keys:
            fig, ax = plt.subplots(figsize=(7, 3), dpi=80)
            x = range(len(keys))
            ax.bar([i - 0.2 for i in x], [base[k] for k in keys], width=0.4, label=result.baseline["ref"],
                   color="#8c8c8c")
            ax.bar([i + 0.2 for i in x], [result.metrics[k] for k in keys], width=0.4,
                   label=result.model_ref or result.model, color="#dd8452")
            ax.set_xticks(list(x), [k[:22] for k in keys], rotation=45, ha="right", fontsize=7)
            ax.legend(fontsize=7)
            ax.set_title("this version against the baseline", fontsize=9)
            out.append(("versus baseline", _png(fig)))
    paired = [c for c in result.gate.checks if c.get("kind") == "paired" and c.get("diff") is not None
              and "latency" not in c["metric"]]
    if paired:  # forest plot: each paired difference with its interval and the non-inferiority margin
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(paired) + 1.2), dpi=80)
        colors = {"pass": "#55a868", "fail": "#c44e52", "inconclusive": "#dd8452"}
        for i, c in enumerate(paired):
            low_better = any(k in c["metric"] for k in LOWER_IS_BETTER)
            sign = -1 if low_better else 1  # drawn so that right = better for every metric
            lo, hi = sorted((sign * c["low"], sign * c["high"]))
            ax.errorbar(sign * c["diff"], i, xerr=[[sign * c["diff"] - lo], [hi - sign * c["diff"]]], fmt="o",
                        color=colors.get(c["outcome"], "#333"), capsize=3)
            ax.plot([-c["margin"]] * 2, [i - 0.4, i + 0.4], color="#999", linestyle="--", linewidth=1)
        ax.axvline(0, color="#333", linewidth=0.8)
        ax.set_yticks(range(len(paired)), [f"{c['metric'][:28]} (n={c['n']})" for c in paired], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("paired difference, oriented: right = better; dashed = -margin", fontsize=8)
        ax.set_title("challenger minus baseline (green pass, orange inconclusive, red fail)", fontsize=9)
        out.append(("paired differences", _png(fig)))
    return out


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:10px 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;
vertical-align:top}th{background:#f3f3f3}.pass{background:#e6f4ea}.fail{background:#fde2e1}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;display:inline-block}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;border-radius:6px;padding:6px}
details{margin:8px 0}"""


def to_html(result: Any) -> str:
    e = html.escape
    g = result.gate
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Eval {e(result.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation {e(result.name)}: {e(str(result.model_ref or result.model))}</h1>",
             f"<div class='banner {'pass' if g.passed else 'fail'}'>Gate {e(g.outcome)}</div>"]
    if g.failures or g.notes or g.inconclusive:
        parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in g.failures + g.inconclusive
                                      + [f"note: {n}" for n in g.notes]) + "</ul>")
    base = result.baseline.get("metrics") or {}
    checks = _baseline_checks(g)
    for name, r in result.suites.items():
        parts.append(f"<h2>{e(name)} ({e(r.kind)})</h2><p>{r.failures['samples']} samples, {r.failures['failed']} "
                     f"failed, {r.failures['blocked']} blocked; dataset {e(r.dataset.path)} "
                     f"(sha256 {r.dataset.sha256[:16]})</p>")
        parts.append("<table><tr><th>metric</th><th>value</th><th>baseline</th><th>paired difference "
                     "[interval], rows, outcome</th><th>p (McNemar, worse)</th><th>rows needed</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td><td>{_fmt(base.get(f'{name}.{k}'))}</td>"
            f"<td>{e(paired_cell(checks.get(f'{name}.{k}')))}</td>"
            f"<td>{_fmt((checks.get(f'{name}.{k}') or {}).get('p_worse'))}</td>"
            f"<td>{_fmt((checks.get(f'{name}.{k}') or {}).get('needed_n'))}</td></tr>"
            for k, v in r.metrics.items()) + "</table>")
        if r.by_tag:
            cols = sorted({k for row in r.by_tag.values() for k in row if k != "n"})
            parts.append("<table><tr><th>tag</th><th>rows</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) +
                         "</tr>" + "".join(f"<tr><td>{e(t)}</td><td>{int(row.get('n', 0))}</td>" + "".join(
                             f"<td>{_fmt(row.get(c))}</td>" for c in cols) + "</tr>" for t, row in r.by_tag.items())
                         + "</table>")
        rows = "".join(
            f"<tr><td>{e(p['id'])}</td><td>{e(p['question'][:200])}</td><td>{e(p['output'][:300])}</td>"
            f"<td>{e(str(p.get('reference') or ''))[:200]}</td><td>{e(p.get('error') or p.get('error_code') or '')}"
            f"</td><td>{e(', '.join(f'{k}={_fmt(v)}' for k, v in p.items() if isinstance(v, float)))}</td></tr>"
            for p in r.per_sample)
        parts.append(f"<details><summary>samples ({len(r.per_sample)})</summary><table><tr><th>id</th>"
                     f"<th>question</th><th>output</th><th>reference</th><th>error</th><th>scores</th></tr>"
                     f"{rows}</table></details>")
    plots = _plots(result)
    if plots:
        parts.append("<h2>Plots</h2><div class='grid'>" + "".join(
            f"<div class='card'><img alt='{e(t)}' src='data:image/png;base64,{b}'></div>" for t, b in plots)
            + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(result: Any, out_dir: Path, cfg: Any) -> dict[str, Path]:
    """Write eval_report.{md,html,json} into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "eval_report.md", "html": out_dir / "eval_report.html",
             "json": out_dir / "eval_report.json"}
    paths["md"].write_text(to_markdown(result))
    paths["html"].write_text(to_html(result))
    paths["json"].write_text(json.dumps(to_json(result, cfg), indent=2, default=str))
    return paths
