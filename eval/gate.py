"""The promotion gate: absolute thresholds plus "no metric worse than the baseline by more than delta".

Lower-is-better metrics (latency, error and false-refusal rates) are recognised by name. A suite
whose dataset changed since the baseline's evaluation is not compared silently: the gate fails and
says so. Example::

    result = check_gate(GateConfig(thresholds={"task.token_f1": 0.3}), {"task.token_f1": 0.42}, baseline={})
    result.passed, result.failures
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.contracts import RegistryAPI

LOWER_IS_BETTER = ("latency", "error_rate", "false_refusal_rate")


class GateConfig(StrictModel):
    """When a version may be promoted."""

    thresholds: dict[str, float] = Field(default_factory=dict, description="<suite>.<metric>: minimum value "
                                         "(maximum for latency / error / false-refusal metrics).")
    max_regression: float = Field(0.02, ge=0, description="Largest allowed drop versus the baseline (absolute).")
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


def lower_is_better(metric: str) -> bool:
    return any(key in metric for key in LOWER_IS_BETTER)


def check_gate(cfg: GateConfig, metrics: dict[str, float], baseline: dict[str, Any]) -> GateResult:
    """Check ``metrics`` against thresholds and the baseline's metrics."""
    res = GateResult(True)
    for name, limit in cfg.thresholds.items():
        value = metrics.get(name)
        low = lower_is_better(name)
        ok = value is not None and (value <= limit if low else value >= limit)
        res.checks.append({"metric": name, "kind": "threshold", "value": value, "limit": limit, "ok": ok})
        if not ok:
            shown = "missing" if value is None else f"{value:.4f}"
            res.failures.append(f"{name} = {shown} {'>' if low else '<'} threshold {limit}")
    base = baseline.get("metrics")
    changed = set(baseline.get("dataset_changed", []))
    if base is None:
        res.notes.append(f"no baseline comparison: {baseline.get('reason', 'no baseline')}")
        if cfg.require_baseline:
            res.failures.append(f"baseline required but unavailable ({baseline.get('reason')})")
    else:
        for name in cfg.compare or list(cfg.thresholds):
            suite = name.split(".", 1)[0]
            value, before = metrics.get(name), base.get(name)
            if suite in changed:
                res.failures.append(f"{name}: the {suite} dataset changed since the baseline's evaluation; "
                                    f"re-evaluate {baseline.get('ref')} on it before comparing")
                res.checks.append({"metric": name, "kind": "baseline", "value": value, "baseline": before,
                                   "ok": False, "note": "dataset changed"})
                continue
            if value is None or before is None:
                res.notes.append(f"{name}: not compared (missing in {'this run' if value is None else 'baseline'})")
                continue
            delta = value - before
            worse = -delta if not lower_is_better(name) else delta
            # latency is compared relatively (ms scale); rates and scores absolutely
            allowed = cfg.max_regression * (before if "latency" in name else 1.0)
            ok = worse <= allowed
            res.checks.append({"metric": name, "kind": "baseline", "value": value, "baseline": before,
                               "delta": delta, "ok": ok})
            if not ok:
                res.failures.append(f"{name} = {value:.4f} is worse than baseline {baseline.get('ref')} "
                                    f"({before:.4f}) by more than {allowed:.4g}")
    res.passed = not res.failures
    return res


def promote(registry: RegistryAPI, model_ref: str, result: GateResult, alias: str = "champion") -> Any:
    """Move ``alias`` to the evaluated version when the gate passed (audited); None when it did not."""
    from llmops.registry import parse_ref

    if not result.passed:
        return None
    name, _, version = parse_ref(model_ref)
    reason = "eval gate passed: " + ("; ".join(f"{c['metric']}={c['value']:.4f}" for c in result.checks
                                               if c.get("value") is not None) or "no checks configured")
    return registry.set_alias(name, alias, version, reason=reason[:500])
