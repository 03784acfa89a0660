"""Fine-tuning benchmark: training tokens/s and peak memory on SmolLM2-135M, our default vs a naive baseline.

Both variants run the real ``finetune.train.run`` on the shipped context-QA set for the same number of
optimiser steps (batch 4, LoRA r=16 on all linear layers), each in its own process so peak RSS is
its own:

- default: bf16 (AVX512-BF16 autocast, bf16 base weights), packing, logits only where labels are
  trained, LoRA dropout 0 (configs/finetune/default.yaml);
- naive: fp32, no packing, every row padded to max_length, full logits (the plain HF Trainer path).

tokens/s counts real (non-pad) tokens. Model FLOP utilisation uses ~6·N FLOPs per token against this
CPU's measured peak (a large bf16 / fp32 matmul in the same run). Goal: default >= 1.5x naive.
Writes benchmarks/results/finetune.{json,md}::

    python benchmarks/finetune.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file shares its name with a project package: import the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {
    "default": {"training.precision": "bf16", "data.packing": True, "data.pad_to_max_length": False,
                "training.selective_logits": True},
    "naive": {"training.precision": "fp32", "data.packing": False, "data.pad_to_max_length": True,
              "training.selective_logits": False},
}


def one_variant(name: str, steps: int, out: Path) -> dict:
    """Train ``steps`` steps with a variant's overrides (runs in a child process)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from finetune.train import FinetuneConfig, run
    from llmops.config import load_config
    from llmops.registry import Registry, RegistryConfig

    overrides = [f"{k}={json.dumps(v)}" for k, v in VARIANTS[name].items()] + [
        f"training.max_steps={steps}", "data.val_fraction=0", "register_adapter=false", "serving_config=null",
        f"output_dir={out}", "training.save_steps=100000", "training.logging_steps=1"]
    cfg = load_config(ROOT / "configs/finetune/default.yaml", FinetuneConfig, overrides)
    cfg.data.path = str(ROOT / cfg.data.path)
    cfg.base_model = str(ROOT / "models" / cfg.base_model)
    res = run(cfg, registry=Registry(RegistryConfig(root=str(out / "mlruns"))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": name, "steps": steps, "tokens_per_s": res.metrics["tokens_per_s"],
            "seconds": res.metrics["train_runtime_s"], "train_loss": res.metrics["train_loss"],
            "peak_rss_mb": round(peak_mb), "total_params": res.metrics["total_params"], "data": res.data_stats}


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n matmul on this CPU (the practical peak)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:  # child process
        print("RESULT " + json.dumps(one_variant(args.variant, args.steps, Path(args.out))))
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("default", "naive"):
            print(f"== {name}: {args.steps} steps", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps),
                                   "--out", str(Path(tmp) / name)], capture_output=True, text=True,
                                  env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[name] = json.loads(line[7:])
            print(f"   {results[name]['tokens_per_s']:.0f} tokens/s, peak {results[name]['peak_rss_mb']} MB")
    import torch

    peaks = {d: matmul_peak(d) for d in ("bfloat16", "float32")}
    n_params = results["default"]["total_params"]
    for name, dtype in (("default", "bfloat16"), ("naive", "float32")):
        r = results[name]
        r["model_flops_per_s"] = 6 * n_params * r["tokens_per_s"]
        r["mfu_vs_measured_peak"] = r["model_flops_per_s"] / peaks[dtype]
    speedup = results["default"]["tokens_per_s"] / results["naive"]["tokens_per_s"]
    report = {
        "benchmark": "finetune", "model": "SmolLM2-135M-Instruct", "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "matmul_peak_flops": peaks, "results": results, "speedup_tokens_per_s": speedup,
        "memory_ratio": results["default"]["peak_rss_mb"] / results["naive"]["peak_rss_mb"],
        "goal": "default >= 1.5x naive tokens/s", "goal_met": speedup >= 1.5,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune.json").write_text(json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {n} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']} | {r['model_flops_per_s'] / 1e9:.1f} | "
        f"{100 * r['mfu_vs_measured_peak']:.1f}% | {r['train_loss']:.3f} |" for n, r in results.items())
    md = f"""# Fine-tuning benchmark ({report['date']})

SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, batch 4, {args.steps} steps on the shipped
context-QA set, {report['machine']['threads']} CPU threads. tokens/s counts real (non-pad) tokens.
MFU = 6·N·tokens/s over this CPU's measured matmul peak
(bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s).

| variant | tokens/s | peak RSS MB | model GFLOP/s | MFU | train loss |
|---|---|---|---|---|---|
{rows}

**default / naive tokens/s: {speedup:.2f}x** (goal >= 1.5x: {'met' if report['goal_met'] else 'NOT met'});
peak memory ratio {report['memory_ratio']:.2f}.

6·N is the usual "model FLOPs" convention; LoRA skips the frozen weights' gradients (about a third of
that work) and the default skips the LM head on untrained positions, so MFU here is an effective
figure (work a full fine-tune would do per token), not the arithmetic the CPU actually ran.
"""
    (RESULTS / "finetune.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
