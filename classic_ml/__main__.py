"""``llmops classic``: train, register and batch-score tabular models.

Examples::

    llmops classic train --config configs/classic/default.yaml model.type=random_forest
    llmops classic train-text --config configs/classic/text.yaml     # the guardrails' injection classifier
    llmops classic make-data --rows 2000 --shift 1.0 --out data/classic/current.parquet
    llmops classic predict --model credit-risk@champion --input data/classic/current.parquet \\
        --output outputs/classic/scored.parquet
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "llmops classic") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("train", help="train, cross-validate and register a model")
    p.add_argument("--config", help="YAML (configs/classic/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p = sub.add_parser("train-text", help="train and register a text classifier (the injection classifier)")
    p.add_argument("--config", help="YAML (configs/classic/text.yaml)")
    p.add_argument("--reuse", action="store_true", help="keep the alias's version when it was trained on the same "
                   "data (sha256) and config; train otherwise")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p = sub.add_parser("predict", help="score a CSV/Parquet batch with a registered model")
    p.add_argument("--model", default="credit-risk@champion", help="registry reference")
    p.add_argument("--input", required=True, help="CSV/Parquet to score")
    p.add_argument("--output", required=True, help="CSV/Parquet to write")
    p = sub.add_parser("make-data", help="write a generated credit-risk batch (optionally shifted)")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shift", type=float, default=0.0, help="0 = reference population")
    p.add_argument("--out", required=True, help="CSV/Parquet path")
    args = parser.parse_args(argv)

    if args.action == "train":
        from classic_ml.train import ClassicTrainConfig, run
        from llmops.config import load_config

        result = run(load_config(args.config, ClassicTrainConfig, args.overrides))
        print(f"registered {result.version.ref} aliases={list(result.version.aliases)}")
        for k, v in result.metrics.items():
            if not k.endswith("_std"):
                print(f"  {k:10s} {v:.4f} ± {result.metrics[k + '_std']:.4f}")
    elif args.action == "train-text":
        from classic_ml.text import TextClassifierConfig
        from classic_ml.text import run as train_text
        from llmops.config import load_config

        result = train_text(load_config(args.config, TextClassifierConfig, args.overrides), reuse=args.reuse)
        if result.reused:
            print(f"reused {result.version.ref} aliases={list(result.version.aliases)} (trained on the same data "
                  "and config)")
        else:
            print(f"registered {result.version.ref} aliases={list(result.version.aliases)}")
        for k, v in result.metrics.items():
            print(f"  {k:10s} {v:.4f}")
    elif args.action == "predict":
        from classic_ml.predict import PredictConfig, run

        res = run(PredictConfig(model=args.model, input=args.input, output=args.output))
        print(f"scored {res.rows} rows with {res.model_ref} -> {res.output}")
    else:
        from classic_ml.data import credit_risk, write_table

        df = credit_risk(args.rows, args.seed, args.shift).drop(columns=["default"])
        print(f"wrote {write_table(df, args.out)} ({len(df)} rows, shift={args.shift})")
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
