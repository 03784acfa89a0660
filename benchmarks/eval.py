"""Eval benchmark: wall time to evaluate 200 samples against the default endpoint, split into
generation time and our own overhead.

The default model is served once (vLLM + gateway, as ``llmops eval`` serves a registry version).
Baseline in the same run: the same 200 prompts sent with the plain ``openai`` async client at the
same concurrency and max_tokens, nothing else (pure generation time). Ours: ``eval.run.run`` on the
same endpoint (dataset validation, requests, scoring, MD/HTML/JSON reports, MLflow logging).
Overhead = ours - baseline. Order A-B-B-A against drift of the machine. Goal: overhead < 10% of
the total. The second ``eval.run`` evaluates a second registry version against the first (the gate's
paired comparison: baseline rows read back from MLflow, bootstrap intervals, McNemar); that part is
timed on its own against the eval's wall time (goal <= 2%). Writes benchmarks/results/eval.{json,md}::

    python benchmarks/eval.py [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file shares its name with a project package: import the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def make_set(path: Path, n: int) -> Path:
    rows = [json.loads(x) for x in (ROOT / "examples/finetune/context_qa.jsonl").read_text().splitlines()]
    out = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        r["id"] = f"s{i}"
        out.append(json.dumps(r))
    path.write_text("\n".join(out) + "\n")
    return path


async def raw_client(ep, rows, concurrency: int, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    from eval.targets import messages_for

    client = AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0, timeout=300)
    sem = asyncio.Semaphore(concurrency)

    async def one(row):
        async with sem:
            await client.chat.completions.create(model=ep.model, messages=messages_for(row), max_tokens=max_tokens,
                                                 temperature=0.0)

    t = time.perf_counter()
    await asyncio.gather(*(one(r) for r in rows))
    await client.close()
    return time.perf_counter() - t


def machine() -> dict:
    from llmops.hardware import cpu_summary, resolve_dtype

    choice = resolve_dtype("auto")
    return {**cpu_summary(), "dtype": choice.dtype}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()

    from eval.datasets import load_dataset
    from eval.run import EvalConfig, run
    from eval.targets import serve_registry_version
    from llmops.cli import setup_logging
    from llmops.registry import Registry, RegistryConfig

    setup_logging()
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_set(tmp / "set.jsonl", args.samples)
        rows = load_dataset(data).rows
        registry = Registry(RegistryConfig(root=str(tmp / "mlruns")))
        for alias in ("champion", "challenger"):  # the same files: version 2 is evaluated against version 1
            registry.register("smollm2-135m-instruct", ROOT / "models/smollm2-135m-instruct", kind="base_model",
                              aliases=[alias])
        stats_s: list[float] = []
        timings: dict[str, list[float]] = {"raw": [], "eval": []}
        outside: list[float] = []  # eval.run time not spent waiting for answers (scoring, reports, MLflow)
        t0 = time.perf_counter()
        with serve_registry_version("smollm2-135m-instruct@champion", ROOT / "configs/serving/default.yaml",
                                    tmp / "serve", registry) as ep:
            startup = time.perf_counter() - t0
            print(f"endpoint ready in {startup:.0f} s", flush=True)
            # warm-up over the whole set: vLLM's prefix cache is then equally warm for every measured run
            asyncio.run(raw_client(ep, rows, args.concurrency, args.max_tokens))
            for i, which in enumerate(("raw", "eval", "eval", "raw")):
                if which == "raw":
                    dt = asyncio.run(raw_client(ep, rows, args.concurrency, args.max_tokens))
                else:
                    import os

                    os.environ["LLMOPS_BENCH_KEY"] = ep.api_key
                    cfg = EvalConfig.model_validate({
                        "name": "bench",
                        "target": {"model": None, "base_url": ep.base_url, "model_name": ep.model,
                                   "api_key_env": "LLMOPS_BENCH_KEY", "registry_ref": f"smollm2-135m-instruct/{i}"},
                        "suites": [{"name": "task", "dataset": str(data), "kind": "qa"}],
                        "requests": {"concurrency": args.concurrency, "max_tokens": args.max_tokens},
                        "gate": {"baseline": "smollm2-135m-instruct/1",
                                 "compare": ["task.token_f1", "task.rouge_l"]},
                        "report_dir": str(tmp / "reports"), "log_to_registry": True})
                    t = time.perf_counter()
                    result = run(cfg, registry=registry)
                    dt = time.perf_counter() - t
                    assert result.suites["task"].failures["failed"] == 0, result.suites["task"].failures
                    outside.append(dt - sum(r.wall_s for r in result.suites.values()))
                    if i == 2:  # version 2 against version 1: the paired statistics, timed on their own
                        from eval.gate import check_gate
                        from eval.run import baseline_for

                        t = time.perf_counter()
                        base = baseline_for(cfg, result.model_ref, registry)
                        gate = check_gate(cfg.gate, result.metrics, base,
                                          {n: r.per_sample for n, r in result.suites.items()})
                        stats_s.append(time.perf_counter() - t)
                        paired = [c for c in gate.checks if c.get("kind") == "paired"]
                        assert len(paired) >= 2 and all(c["n"] > 0 for c in paired), gate.checks
                timings[which].append(dt)
                print(f"  {which}: {dt:.1f} s", flush=True)
    raw, ours = statistics.fmean(timings["raw"]), statistics.fmean(timings["eval"])
    overhead = ours - raw
    report = {"benchmark": "eval", "date": time.strftime("%Y-%m-%d"), "samples": args.samples,
              "concurrency": args.concurrency, "max_tokens": args.max_tokens, "endpoint_startup_s": startup,
              "raw_client_s": timings["raw"], "eval_run_s": timings["eval"], "generation_s": raw,
              "overhead_s": overhead, "overhead_share": overhead / ours,
              "outside_requests_s": outside, "outside_share": statistics.fmean(outside) / ours,
              "goal": "overhead < 10% of the total", "goal_met": max(overhead, statistics.fmean(outside)) / ours < 0.10,
              "gate_statistics_s": stats_s[0], "gate_statistics_share": stats_s[0] / ours,
              "gate_statistics_goal": "<= 2% of the eval's wall time",
              "gate_statistics_goal_met": stats_s[0] / ours <= 0.02, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(report, indent=2))
    md = f"""# Eval benchmark ({report['date']})

{args.samples} samples of the context-QA set against the default endpoint (SmolLM2-135M on vLLM behind
the gateway with guardrails), concurrency {args.concurrency}, max_tokens {args.max_tokens}, order A-B-B-A.

| run | wall s (each) | mean |
|---|---|---|
| plain openai client (generation only) | {', '.join(f'{x:.1f}' for x in timings['raw'])} | {raw:.1f} |
| `eval.run` (requests, scoring, reports, MLflow) | {', '.join(f'{x:.1f}' for x in timings['eval'])} | {ours:.1f} |

Generation {raw:.1f} s, our overhead by difference {overhead:.1f} s = {100 * overhead / ours:.1f}% of the
total; measured directly inside `eval.run` (time not spent waiting for answers: dataset validation,
scoring, reports, MLflow logging) {statistics.fmean(outside):.2f} s =
**{100 * statistics.fmean(outside) / ours:.1f}% of the total**
(goal < 10%: {'met' if report['goal_met'] else 'NOT met'}).
Serving the version for the run took a further {startup:.0f} s (vLLM start-up), once per evaluation.

The gate's paired comparison of the second run (baseline rows read back from MLflow, bootstrap
intervals and McNemar on up to {max(c["n"] for c in paired)} paired rows x {len(paired)} metrics) took
{stats_s[0]:.2f} s =
**{100 * stats_s[0] / ours:.2f}% of the eval's wall time** (goal <= 2%:
{'met' if report['gate_statistics_goal_met'] else 'NOT met'}).

Machine: {report['machine']}
"""
    (RESULTS / "eval.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
