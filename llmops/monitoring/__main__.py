"""``llmops drift``: compare a current batch with a reference; HTML + JSON report.

Exit code 0: no dataset drift, 1: dataset drift, 2: bad input. Example::

    llmops drift --reference data/classic/reference.parquet --current data/classic/current.csv \\
        --out reports/drift drift.drift_share=0.3
    llmops drift --request-log data/requestlog/requests.sqlite --split -24h --out reports/llm-drift
    llmops drift --request-log data/requestlog/requests.sqlite --by-version smollm2-qa --out reports/rollout
    llmops drift --reference-eval reports/eval/default/A/eval_report.json \
        --current-eval reports/eval/default/B/eval_report.json --out reports/eval-drift
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops drift") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 no dataset drift, 1 dataset drift, 2 bad input.")
    parser.add_argument("--reference", help="reference CSV/Parquet file")
    parser.add_argument("--current", help="current CSV/Parquet file")
    parser.add_argument("--request-log", action="append",
                        help="gateway request log (SQLite) instead of two files; repeat it for several gateways")
    parser.add_argument("--split", help="with --request-log: ISO time or '-24h' (default) between ref and current")
    parser.add_argument("--by-version", metavar="MODEL",
                        help="with --request-log: the traffic of two registry versions of MODEL (a rollout's "
                        "champion and challenger) instead of before/after --split")
    parser.add_argument("--versions", help="with --by-version: REFERENCE,CURRENT versions (default: the two highest)")
    parser.add_argument("--reference-eval", help="eval_report.json: per-sample eval scores of a baseline run")
    parser.add_argument("--current-eval", help="eval_report.json of the run to compare with --reference-eval")
    parser.add_argument("--config", help="YAML (configs/drift/*.yaml)")
    parser.add_argument("--out", help="output folder (default reports/drift)")
    parser.add_argument("--model", help="registry version to log the report against (name@alias)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    from llmops.config import load_config
    from llmops.monitoring.job import DriftJobConfig, run

    cfg = load_config(args.config, DriftJobConfig, args.overrides)
    # Paths taken verbatim (not parsed as YAML values like the key=value overrides).
    keys = ("reference", "current", "out", "model", "request_log", "split", "reference_eval", "current_eval")
    given = {k: getattr(args, k) for k in keys if getattr(args, k)}
    if args.by_version:
        given["by_version"] = args.by_version
    if args.versions:
        given["versions"] = [v.strip() for v in args.versions.split(",")]
    cfg = DriftJobConfig.model_validate({**cfg.model_dump(), **given})
    result = run(cfg)
    d = result.drift
    verdict = {None: "INVALID INPUT", True: "DATASET DRIFT", False: "no dataset drift"}[d.dataset_drift]
    print(f"{verdict}: {d.n_drifted}/{d.n_columns} columns drifted ({d.share_drifted:.0%})")
    for c in d.columns:
        if c.drifted:
            print(f"  drifted  {c.column}: {c.test} {c.statistic} ({c.reason})")
    for problem in d.schema.get("problems", []):
        print(f"  problem  {problem}")
    print(f"report: {result.html}\njson:   {result.json}")
    return result.exit_code


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
