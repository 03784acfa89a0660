"""The promotion gate: absolute thresholds plus a paired non-inferiority comparison with the baseline.

Every compared metric is compared row by row with the baseline's last evaluation on the same rows
(matched by id; see :mod:`eval.stats`): a bootstrap interval of the difference, McNemar's exact test
for 0/1 rates, and a decision per metric: pass (non-inferior within the margin), fail (significantly
worse) or inconclusive (too few rows, or an interval that straddles the margin). The gate's outcome
is ``failed`` if any check failed, else ``inconclusive`` if any comparison was, else ``passed``;
only ``passed`` promotes. Lower-is-better metrics (latency, error, false-refusal and degenerate-output
rates) are recognised by name. A suite whose dataset changed since the baseline's evaluation is not
compared silently: the gate fails and says so. Example::

    result = check_gate(GateConfig(thresholds={"task.token_f1": 0.3}), {"task.token_f1": 0.42}, baseline={})
    result.passed, result.outcome, result.failures
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.contracts import RegistryAPI

LOWER_IS_BETTER = ("latency", "error_rate", "false_refusal_rate", "repetition_rate", "empty_rate", "truncated_rate",
                   "charset_mismatch_rate", "degenerate_rate")
# the degenerate-output rates compared by default in every suite that has them (``degenerate: true``)
DEGENERATE_COMPARED = ("degenerate_rate", "truncated_rate")
# compared in every suite whatever the config says: a challenger that fails more requests is not better
ALWAYS_COMPARED = ("error_rate",)
# suite metric -> per-row field of the report's samples (the rest have the same name)
ROW_FIELD = {"refusal_rate": "refused", "redaction_rate": "redacted", "false_refusal_rate": "false_refusal",
             "abstain_rate": "abstained", "repetition_rate": "repetitive", "empty_rate": "empty",
             "truncated_rate": "truncated", "charset_mismatch_rate": "charset_mismatch",
             "degenerate_rate": "degenerate"}


class GateConfig(StrictModel):
    """When a version may be promoted."""

    thresholds: dict[str, float] = Field(default_factory=dict, description="<suite>.<metric>: minimum value "
                                         "(maximum for latency / error / false-refusal metrics).")
    max_regression: float = Field(0.02, ge=0, description="Non-inferiority margin: how far the worst end of the "
                                  "paired interval may fall below the baseline, absolute (relative to the baseline "
                                  "for latency); a loss that is significant (interval below 0) fails even "
                                  "inside it.")
    margins: dict[str, float] = Field(default_factory=dict, description="<suite>.<metric>: its own margin.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the paired intervals (the "
                              "tests are one-sided at (1 - confidence) / 2).")
    min_samples: int = Field(20, ge=2, description="Fewer paired rows than this: the metric is inconclusive.")
    degenerate: bool = Field(True, description="Also compare each suite's degenerate_rate and truncated_rate.")
    resamples: int = Field(2000, ge=200, description="Bootstrap resamples.")
    compare: list[str] = Field(default_factory=list, description="Metrics compared with the baseline "
                               "(empty: every metric in thresholds).")
    baseline: str | None = Field(None, description="Baseline version (default: <evaluated name>@champion; "
                                 "'none' to skip the comparison).")
    require_baseline: bool = Field(False, description="Fail when no baseline evaluation exists.")


@dataclass
class GateResult:
    passed: bool
    failures: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outcome: str = ""  # passed / failed / inconclusive (derived from the rest when empty)
    inconclusive: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outcome:
            self.outcome = "failed" if self.failures else "inconclusive" if self.inconclusive else (
                "passed" if self.passed else "failed")
        self.passed = self.outcome == "passed"


def lower_is_better(metric: str) -> bool:
    return any(key in metric for key in LOWER_IS_BETTER)


def row_scores(samples: list[dict[str, Any]], metric: str) -> dict[str, float] | None:
    """``{row id: score}`` of one suite metric from a report's per-row samples; None for metrics that
    have no per-row score (throughput)."""
    if metric == "error_rate":
        return {str(p["id"]): float(p.get("error") is not None) for p in samples}
    if metric.startswith("latency"):
        # a percentile of the suite is not a mean of per-row scores: it is compared on the suite figures
        return None
    key = ROW_FIELD.get(metric, metric)
    if not any(key in p for p in samples) and any(f"judge_{metric}" in p for p in samples):
        key = f"judge_{metric}"  # ragas metrics are stored per row as judge_<name>
    if not any(key in p for p in samples):
        return None if metric in ("output_tok_per_s",) else {}
    return {str(p["id"]): float(p[key]) for p in samples
            if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])}


def compared_metrics(cfg: GateConfig, metrics: dict[str, float]) -> list[str]:
    """The metrics the gate compares: ``compare`` (or the thresholds), plus each suite's error rate and
    (``degenerate: true``) degenerate-output rates."""
    names = list(cfg.compare or cfg.thresholds)
    names += [m for m in metrics if m.split(".", 1)[-1] in ALWAYS_COMPARED and m not in names]
    if cfg.degenerate:
        names += [m for m in metrics if m.split(".", 1)[-1] in DEGENERATE_COMPARED and m not in names]
    return names


def check_gate(cfg: GateConfig, metrics: dict[str, float], baseline: dict[str, Any],
               samples: dict[str, list[dict[str, Any]]] | None = None) -> GateResult:
    """Check ``metrics`` against thresholds, and the per-row ``samples`` ({suite: report rows})
    against the baseline's rows (``baseline["samples"]``, same shape) with paired comparisons."""
    from eval.stats import compare_paired

    failures: list[str] = []
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    inconclusive: list[str] = []
    for name, limit in cfg.thresholds.items():
        value = metrics.get(name)
        low = lower_is_better(name)
        ok = value is not None and (value <= limit if low else value >= limit)
        checks.append({"metric": name, "kind": "threshold", "value": value, "limit": limit, "ok": ok})
        if not ok:
            shown = "missing" if value is None else f"{value:.4f}"
            failures.append(f"{name} = {shown} {'>' if low else '<'} threshold {limit}")
    base = baseline.get("metrics")
    changed = set(baseline.get("dataset_changed", []))
    base_rows = baseline.get("samples") or {}
    samples = samples or {}
    if base is None:
        notes.append(f"no baseline comparison: {baseline.get('reason', 'no baseline')}")
        if cfg.require_baseline:
            failures.append(f"baseline required but unavailable ({baseline.get('reason')})")
        return GateResult(not failures, failures, checks, notes)
    ref = baseline.get("ref")
    explicit = set(cfg.compare or cfg.thresholds)
    for name in compared_metrics(cfg, metrics):
        suite, _, metric = name.partition(".")
        value, before = metrics.get(name), base.get(name)
        if suite in changed:
            failures.append(f"{name}: the {suite} dataset changed since the baseline's evaluation; "
                            f"re-evaluate {ref} on it before comparing")
            checks.append({"metric": name, "kind": "baseline", "value": value, "baseline": before,
                           "ok": False, "outcome": "fail", "note": "dataset changed"})
            continue
        if value is None or before is None:
            notes.append(f"{name}: not compared (missing in {'this run' if value is None else 'baseline'})")
            continue
        margin = cfg.margins.get(name, cfg.max_regression)
        cur_rows = row_scores(samples.get(suite, []), metric)
        old_rows = row_scores(base_rows.get(suite, []), metric) if suite in base_rows else {}
        if cur_rows is None or old_rows is None:  # no per-row score: the means, against the margin
            worse = (value - before) * (1 if lower_is_better(name) else -1)
            ok = worse <= margin * (abs(before) if "latency" in name or "tok_per_s" in name else 1.0)
            checks.append({"metric": name, "kind": "baseline", "value": value, "baseline": before,
                           "delta": value - before, "ok": ok, "outcome": "pass" if ok else "fail",
                           "note": "means only (no per-row score)"})
            if not ok:
                failures.append(f"{name} = {value:.4f} is worse than baseline {ref} ({before:.4f}) by more "
                                f"than the margin")
            continue
        if suite not in base_rows:
            inconclusive.append(f"{name}: the baseline {ref} has no per-row results for {suite} "
                                f"(evaluated before paired comparisons); re-evaluate it")
            checks.append({"metric": name, "kind": "paired", "value": value, "baseline": before, "ok": False,
                           "outcome": "inconclusive", "reason": "no per-row baseline"})
            continue
        cmp = compare_paired(name, cur_rows, old_rows, margin=margin, confidence=cfg.confidence,
                             min_samples=cfg.min_samples, lower_is_better=lower_is_better(name),
                             resamples=cfg.resamples)
        checks.append({"kind": "paired", "ok": cmp.outcome == "pass", **cmp.to_dict(),
                       "mean_value": value, "mean_baseline": before})
        if cmp.outcome == "fail":
            failures.append(f"{name}: {cmp.reason}; difference {cmp.diff:+.4f} over {cmp.n} paired rows "
                            f"versus {ref}")
        elif (cmp.outcome == "inconclusive" and name not in explicit and metric in ALWAYS_COMPARED
              and cmp.n < cfg.min_samples):
            notes.append(f"{name}: {cmp.reason} (guards against a significant loss only)")
        elif cmp.outcome == "inconclusive":
            inconclusive.append(f"{name}: inconclusive, {cmp.reason}")
    return GateResult(not failures and not inconclusive, failures, checks, notes, inconclusive=inconclusive)


def promote(registry: RegistryAPI, model_ref: str, result: GateResult, alias: str = "champion") -> Any:
    """Move ``alias`` to the evaluated version when the gate passed (audited); None when it did not."""
    from llmops.registry import parse_ref

    if not result.passed:
        return None
    name, _, version = parse_ref(model_ref)

    def fig(c: dict[str, Any]) -> str:
        if c.get("kind") == "paired" and c.get("diff") is not None:
            return f"{c['metric']} {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] n={c['n']}"
        return f"{c['metric']}={c['value']:.4f}"

    reason = "eval gate passed: " + ("; ".join(fig(c) for c in result.checks if c.get("value") is not None)
                                     or "no checks configured")
    return registry.set_alias(name, alias, version, reason=reason[:500])
