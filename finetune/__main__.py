"""``llmops finetune``: LoRA fine-tuning to a registered, servable adapter.

Examples::

    llmops finetune --config configs/finetune/default.yaml                  # train, gate, register
    llmops finetune --config configs/finetune/default.yaml training.max_steps=20 lora.r=16
    llmops finetune --config configs/finetune/default.yaml --resume         # continue from the last checkpoint
    llmops finetune check outputs/finetune/smollm2-qa/adapter               # can vLLM serve it?
    llmops finetune export smollm2-qa@champion --out outputs/merged/smollm2-qa   # merge into a full model
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "configs/finetune/default.yaml"


def _train(argv: Sequence[str], prog: str) -> int:
    from finetune.train import FinetuneConfig, run
    from llmops.config import load_config

    p = argparse.ArgumentParser(
        prog=prog, description="Train a LoRA adapter, check it is servable, register it (the default action).",
        epilog="Other actions: `llmops finetune check ADAPTER` (can vLLM serve it?), `llmops finetune export "
        "ADAPTER --out DIR` (merge into a full model). Each has --help.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this run")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.max_steps=20")
    args = p.parse_args(argv)
    cfg = load_config(args.config, FinetuneConfig, args.overrides)
    res = run(cfg, resume=args.resume)
    m = res.metrics
    print(f"adapter: {res.adapter_dir}")
    if res.version:
        print(f"registered {res.version.ref} aliases={list(res.version.aliases)}")
    print(f"steps {m.get('steps')}  train loss {m.get('train_loss', float('nan')):.4f}  eval loss "
          f"{m.get('eval_loss_start', float('nan')):.4f} -> {m.get('eval_loss', float('nan')):.4f}  "
          f"{m.get('tokens_per_s', 0):.0f} tokens/s")
    print(f"data: {res.data_stats}")
    return 0


def _check(argv: Sequence[str], prog: str) -> int:
    from finetune.compat import ensure_servable
    from llmops.assets import resolve_model

    p = argparse.ArgumentParser(prog=f"{prog} check", description="Can the serving engines load this adapter?")
    p.add_argument("adapter", help="adapter folder or registry reference (name@alias)")
    p.add_argument("--serving-config", default="configs/serving/default.yaml")
    p.add_argument("--base", default=None, help="base model the adapter runs on (default: the serving engine's)")
    args = p.parse_args(argv)
    adapter = resolve_model(args.adapter)
    ensure_servable(adapter, resolve_model(args.base) if args.base else adapter, args.serving_config)
    print(f"ok: {adapter} can be served by {args.serving_config}")
    return 0


def _export(argv: Sequence[str], prog: str) -> int:
    from finetune.export import merge_adapter

    p = argparse.ArgumentParser(prog=f"{prog} export", description="Merge an adapter into a full model folder.")
    p.add_argument("adapter", help="adapter folder or registry reference (name@alias)")
    p.add_argument("--out", required=True, help="folder to write (must not exist)")
    p.add_argument("--base", default=None, help="base model (default: the one recorded with the adapter)")
    args = p.parse_args(argv)
    print(f"merged model written to {merge_adapter(args.adapter, args.out, args.base)}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "llmops finetune") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = {"train": _train, "check": _check, "export": _export}
    if argv and argv[0] in actions:
        return actions[argv[0]](argv[1:], prog)
    return _train(argv, prog)


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
