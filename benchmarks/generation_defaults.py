"""Which generation settings avoid repetition loops on the default model: an eval run per setting.

The default model is served once (vLLM + gateway with guardrails, as ``llmops eval`` serves a
registry version) and the shipped task (context QA, test split) and RAG suites are evaluated with
each setting: no penalty, vLLM's ``repetition_penalty`` 1.1 and 1.2, and OpenAI's
``frequency_penalty`` 0.5, all greedy (temperature 0) at the default eval's max_tokens. Each setting
is compared row by row with "none" (paired bootstrap / McNemar, :mod:`eval.stats`): a setting is
worth making the default only if it lowers the degenerate or truncated rate without a token-F1 loss
beyond the margin. Writes benchmarks/results/generation_defaults.{json,md}::

    python benchmarks/generation_defaults.py [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

SETTINGS = {"none": {}, "repetition_penalty 1.1": {"repetition_penalty": 1.1},
            "repetition_penalty 1.2": {"repetition_penalty": 1.2}, "frequency_penalty 0.5": {"frequency_penalty": 0.5}}
METRICS = ("token_f1", "degenerate_rate", "truncated_rate", "repetition_rate")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--margin", type=float, default=0.02)
    args = p.parse_args()

    from eval.gate import lower_is_better, row_scores
    from eval.run import EvalConfig, run
    from eval.stats import compare_paired
    from eval.targets import serve_registry_version
    from llmops.cli import setup_logging
    from llmops.hardware import cpu_summary, resolve_dtype
    from llmops.registry import Registry, RegistryConfig

    setup_logging()
    logging.getLogger().setLevel(logging.WARNING)
    os.chdir(ROOT)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = Registry(RegistryConfig(root=str(tmp / "mlruns")))
        registry.register("smollm2-135m-instruct", ROOT / "models/smollm2-135m-instruct", kind="base_model",
                          aliases=["champion"])
        with serve_registry_version("smollm2-135m-instruct@champion", ROOT / "configs/serving/default.yaml",
                                    tmp / "serve", registry) as ep:
            os.environ["LLMOPS_BENCH_KEY"] = ep.api_key
            for name, body in SETTINGS.items():
                cfg = EvalConfig.model_validate({
                    "name": "gen", "log_to_registry": False,
                    "report_dir": str(tmp / "reports" / name.replace(" ", "_")),
                    "target": {"model": None, "base_url": ep.base_url, "model_name": ep.model,
                               "api_key_env": "LLMOPS_BENCH_KEY"},
                    "suites": [{"name": "task", "dataset": "examples/finetune/context_qa.jsonl", "kind": "qa",
                                "where": {"split": "test"}},
                               {"name": "rag", "dataset": "examples/eval/rag_qa.jsonl", "kind": "rag",
                                "rag_config": "configs/rag/default.yaml", "ingest": ["docs"]}],
                    "requests": {"max_tokens": args.max_tokens, "extra_body": body}, "gate": {"compare": []}})
                t = time.perf_counter()
                res = run(cfg)
                results[name] = {"wall_s": round(time.perf_counter() - t, 1),
                                 "suites": {n: {"metrics": r.metrics, "rows": r.per_sample}
                                            for n, r in res.suites.items()}}
                print(f"{name}: {results[name]['wall_s']} s  " + "  ".join(
                    f"{n}.{m}={r.metrics.get(m)}" for n, r in res.suites.items() for m in METRICS[:3]), flush=True)

    table, verdicts = [], {}
    base = results["none"]["suites"]
    for name, res in results.items():
        helps, hurts = False, False
        for suite in ("task", "rag"):
            for metric in METRICS:
                cur = row_scores(res["suites"][suite]["rows"], metric) or {}
                ref = row_scores(base[suite]["rows"], metric) or {}
                cmp = compare_paired(f"{suite}.{metric}", cur, ref, margin=args.margin, min_samples=20,
                                     lower_is_better=lower_is_better(metric))
                table.append({"setting": name, "metric": f"{suite}.{metric}", "value": cmp.value,
                              "none": cmp.baseline, "diff": cmp.diff, "low": cmp.low, "high": cmp.high, "n": cmp.n,
                              "p_worse": cmp.p_worse, "outcome": cmp.outcome})
                if name == "none" or cmp.diff is None:
                    continue
                if metric == "token_f1" and cmp.outcome != "pass":
                    hurts = True
                if metric in ("degenerate_rate", "truncated_rate") and cmp.high is not None and cmp.high < 0:
                    helps = True  # significantly fewer loops / cut answers
        verdicts[name] = "baseline" if name == "none" else (
            "adopt" if helps and not hurts else "no: token F1 not shown non-inferior" if hurts
            else "no: no significant drop in degenerate or truncated answers")
    report = {"benchmark": "generation_defaults", "date": time.strftime("%Y-%m-%d"), "max_tokens": args.max_tokens,
              "margin": args.margin, "machine": {**cpu_summary(), "dtype": resolve_dtype("auto").dtype},
              "settings": SETTINGS, "wall_s": {k: v["wall_s"] for k, v in results.items()},
              "comparisons": table, "verdicts": verdicts}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation_defaults.json").write_text(json.dumps(report, indent=2))

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"# Generation defaults against repetition loops ({report['date']})", "",
             f"SmolLM2-135M-Instruct (default model) through the gateway, greedy, max_tokens {args.max_tokens}; "
             "task = context-QA test split (72 rows), rag = examples/eval/rag_qa.jsonl (40 rows) through "
             "RAGPipeline. Each setting against `none` on the same rows: paired difference, 95% bootstrap "
             f"interval, McNemar's p for rates, margin {args.margin}.", "",
             f"Machine: {report['machine']}", "",
             "| setting | metric | value | none | diff [95% CI] | n | p (worse) | outcome |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        if r["setting"] == "none":
            continue
        ci = f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]" if r["diff"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['metric']} | {f(r['value'])} | {f(r['none'])} | {ci} | {r['n']} | "
                     f"{f(r['p_worse'])} | {r['outcome']} |")
    lines += ["", "| setting | wall s | decision |", "| --- | --- | --- |"]
    lines += [f"| {k} | {report['wall_s'][k]} | {v} |" for k, v in verdicts.items()]
    (RESULTS / "generation_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
