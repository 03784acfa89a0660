"""``llmops eval``: evaluate a model version, endpoint or RAG pipeline; report; gate promotion.

Examples::

    llmops eval run --config configs/eval/default.yaml                       # the default model on the shipped sets
    llmops eval run --config configs/eval/default.yaml target.model=smollm2-qa@challenger --promote
    llmops eval run --config configs/eval/default.yaml target.model=null \\
        target.base_url=http://127.0.0.1:8000/v1 target.model_name=smollm2   # any OpenAI-compatible endpoint
    llmops eval gate --report reports/eval/default/smollm2-qa_challenger/eval_report.json --promote
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "configs/eval/default.yaml"
INCONCLUSIVE = 3  # exit code of --gate / --promote when the comparison could not decide (too few rows)


def main(argv: Sequence[str] | None = None, prog: str = "llmops eval") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run", help="evaluate, write MD/HTML/JSON reports, log to MLflow, check the gate")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--promote", action="store_true", help="move the champion alias when the gate passes")
    p.add_argument("--gate", action="store_true", help="exit 1 when the gate fails")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    g = sub.add_parser("gate", help="check a written report's gate; --promote moves the alias on pass")
    g.add_argument("--report", required=True, help="eval_report.json")
    g.add_argument("--promote", action="store_true")
    args = parser.parse_args(argv)

    from eval.gate import GateResult, promote
    from llmops.registry import Registry

    if args.action == "run":
        from eval.run import EvalConfig, run
        from llmops.config import load_config

        result = run(load_config(args.config, EvalConfig, args.overrides))
        print(result.report_paths["md"].read_text())
        print(f"reports: {result.report_paths['html']}  {result.report_paths['json']}")
        gate, model_ref = result.gate, result.model_ref
    else:
        data = json.loads(open(args.report).read())
        g_ = data["gate"]
        if "outcome" in g_:
            gate = GateResult(g_["passed"], g_["failures"], g_["checks"], g_["notes"], g_["outcome"],
                              g_.get("inconclusive", []))
        else:  # written before paired comparisons: its "passed" compared means only, which no longer promotes
            gate = GateResult(False, g_["failures"], g_["checks"], g_["notes"], "failed" if g_["failures"]
                              else "inconclusive", ["the report predates paired comparisons; re-run the eval"])
        model_ref = data.get("model_ref")
        print(f"gate {gate.outcome.upper()} for {model_ref}")
        for f in gate.failures + gate.inconclusive:
            print(f"  - {f}")
    if args.promote:
        if not model_ref:
            print("nothing to promote: the target was not a registry version", file=sys.stderr)
            return 1
        move = promote(Registry(), model_ref, gate)
        if move is None:
            print(f"not promoted: the gate {'was inconclusive' if gate.outcome == 'inconclusive' else 'failed'} "
                  f"for {model_ref}")
            return INCONCLUSIVE if gate.outcome == "inconclusive" else 1
        print(f"promoted {model_ref}: {move.name}@{move.alias} {move.from_version} -> {move.to_version}")
        return 0
    if gate.passed or (args.action == "run" and not args.gate):
        return 0
    return INCONCLUSIVE if gate.outcome == "inconclusive" else 1


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
