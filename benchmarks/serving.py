"""Serving benchmark with vLLM's own load generator (`vllm bench serve`), four targets, one run.

Targets: (a) gateway -> vLLM, (b) vLLM directly (the same engine), (c) a naive server calling
transformers `generate` per request, (c') transformers' own continuous batching
(`init_continuous_batching`, paged KV cache); (a) and (b) run in A-B-B-A order at each level, averaged.
Workload: random prompts, mixed input/output lengths (--range-ratio), Poisson arrivals (or all at once:
--rate-per-slot 0), streamed chat or completions (--api), a concurrency sweep. Writes
benchmarks/results/serving.json and serving.md; goals: (b) >= 5x (c) output tok/s at concurrency 32 (and
>= 150 tok/s on a 2-core CPU without AVX-512); the gateway costs <= 5% of throughput and <= 5 ms p50 TTFT
against (b).

    python benchmarks/serving.py                  # full sweep 1/8/32/64 (about 15-25 min here)
    python benchmarks/serving.py --quick          # concurrency 1 and 8, few prompts (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# This file shares its name with a project package: import the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "benchmarks" / "results"
KEY = "sk-bench"
# --api: the `vllm bench serve` backend and endpoint (chat streams through the chat template; completions
# sends the raw random tokens, the workload vLLM's own throughput figures use)
API = {"chat": ("openai-chat", "/v1/chat/completions"), "completions": ("openai", "/v1/completions")}


def wait_http(url: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench(base_url: str, model: str, tokenizer: str, concurrency: int, args, out_dir: Path,
          label: str) -> dict:
    """One `vllm bench serve` run; returns its saved JSON."""
    n = max(args.min_prompts, args.prompts_per_slot * concurrency)
    name = f"{label}-c{concurrency}.json"
    backend, endpoint = API[getattr(args, "api", "chat")]  # scripts that reuse bench() may not have --api
    rate = args.rate_per_slot * concurrency if args.rate_per_slot > 0 else "inf"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "helpers" / "vllm_bench.py"), "bench", "serve",
           "--backend", backend, "--base-url", base_url, "--endpoint", endpoint,
           "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
           "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
           "--random-range-ratio", str(args.range_ratio), "--num-prompts", str(n),
           "--request-rate", str(rate), "--max-concurrency", str(concurrency),
           "--ignore-eos", "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(out_dir),
           "--result-filename", name, "--disable-tqdm"]
    env = dict(os.environ, OPENAI_API_KEY=KEY, HF_HUB_OFFLINE="1")
    print(f"  {label} concurrency={concurrency} prompts={n}", flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out_dir / name).read_text())


def paired_ttft(urls: dict[str, str], pairs: int) -> dict:
    """The gateway's own share of TTFT, measured without load: the same short streamed request sent to
    vLLM and through the gateway back to back (order alternating), ``pairs`` times; the median of the
    per-pair differences cancels the drift that swamps a comparison of two separate sweeps."""
    import random
    import statistics

    def ttft(client: httpx.Client, base: str, prompt: str) -> tuple[float, float]:
        """(ms to the first SSE event with a choice, ms to the first non-empty text)."""
        body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
                "temperature": 0, "stream": True}
        first_event = None
        t = time.perf_counter()
        with client.stream("POST", base + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                choices = event.get("choices") or []
                if choices and first_event is None:
                    first_event = (time.perf_counter() - t) * 1000
                if any((c.get("delta") or {}).get("content") for c in choices):
                    return first_event, (time.perf_counter() - t) * 1000
        raise RuntimeError(f"no content streamed from {base}")

    rng = random.Random(0)
    words = "gateway engine adapter registry tenant drift report cache token alias version".split()
    rows: list[tuple[float, float, float, float]] = []  # vllm event, vllm text, gateway event, gateway text
    with httpx.Client(timeout=60) as client:
        for i in range(pairs + 5):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            order = ["vllm", "gateway"] if i % 2 else ["gateway", "vllm"]
            got = {t: ttft(client, urls[t], prompt) for t in order}
            if i >= 5:  # warm-up pairs are not recorded
                rows.append((*got["vllm"], *got["gateway"]))

    def med(values) -> float:
        return round(statistics.median(values), 2)

    return {"pairs": pairs,
            "vllm_ttft_p50_ms": med(r[1] for r in rows), "gateway_ttft_p50_ms": med(r[3] for r in rows),
            "extra_first_event_p50_ms": med(r[2] - r[0] for r in rows),
            "extra_ttft_p50_ms": med(r[3] - r[1] for r in rows),
            "extra_ttft_p90_ms": round(sorted(r[3] - r[1] for r in rows)[int(0.9 * (len(rows) - 1))], 2)}


def summary(r: dict) -> dict:
    return {
        "requests_per_s": round(r["request_throughput"], 3),
        "output_tok_per_s": round(r["output_throughput"], 2),
        "ttft_p50_ms": round(r["median_ttft_ms"], 2),
        "ttft_p99_ms": round(r["p99_ttft_ms"], 2),
        "itl_p50_ms": round(r["median_itl_ms"], 2),
        "itl_p99_ms": round(r["p99_itl_ms"], 2),
        "completed": r["completed"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.5, help="lengths vary by +-this share")
    p.add_argument("--prompts-per-slot", type=int, default=2, help="prompts = this x concurrency")
    p.add_argument("--min-prompts", type=int, default=8)
    p.add_argument("--rate-per-slot", type=float, default=1.0,
                   help="Poisson rate = this x concurrency; 0 sends every request at once (rate inf)")
    p.add_argument("--api", choices=sorted(API), default="chat", help="chat (streamed chat) or completions")
    p.add_argument("--naive-levels", default="1,32", help="concurrency levels for the naive server")
    p.add_argument("--cb-levels", default="1,32", help="levels for transformers' continuous batching ('' skips)")
    p.add_argument("--ttft-pairs", type=int, default=200, help="paired unloaded TTFT requests (0 skips)")
    p.add_argument("--no-abba", dest="abba", action="store_false", help="one run per target and level")
    p.add_argument("--name", default="serving", help="results file name (benchmarks/results/NAME.json/.md)")
    p.add_argument("--quick", action="store_true", help="concurrency 1,8 and few prompts")
    a = p.parse_args()
    if a.rate_per_slot < 0:
        p.error("--rate-per-slot: 0 (all at once) or a positive rate")
    if a.quick:
        a.concurrency, a.prompts_per_slot, a.min_prompts, a.output_len = "1,8", 1, 4, 32
        a.naive_levels, a.cb_levels, a.abba, a.ttft_pairs = "1", "8", False, 20
    levels = [int(c) for c in a.concurrency.split(",")]
    out = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    results: dict[str, dict] = {"gateway": {}, "vllm": {}, "naive": {}, "transformers_cb": {}}

    gw_port, engine_port = free_port(), free_port()
    env = dict(os.environ, LLMOPS_API_KEYS=f"bench:{KEY}", HF_HUB_OFFLINE="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "llmops", "serve", "--config", str(ROOT / "configs/serving/default.yaml"),
         f"port={gw_port}", f"engines.0.port={engine_port}", f"engines.0.model={a.model_dir}",
         "engines.0.require_key=false",  # the benchmark also measures the bare vLLM behind the gateway
         "limits.default_rpm=1000000", "limits.default_tpm=1000000000", "auth.keys=[]",
         f"request_log.path={out / 'requests.sqlite'}", "embeddings.enabled=false"],
        env=env, stdout=(out / "serve.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        print("starting gateway + vLLM ...", flush=True)
        wait_http(f"http://127.0.0.1:{gw_port}/ready")
        # warm-up (not recorded): vLLM compiles kernels for new batch shapes on first use
        bench(f"http://127.0.0.1:{engine_port}", "smollm2", a.model_dir, max(levels), a, out, "warmup")
        urls = {"vllm": f"http://127.0.0.1:{engine_port}", "gateway": f"http://127.0.0.1:{gw_port}"}
        for c in levels:
            # A-B-B-A order, averaged: the machine drifts during a run (2 shared cores), and whichever
            # target goes first at a level would otherwise carry that drift alone.
            runs: dict[str, list[dict]] = {"vllm": [], "gateway": []}
            for i, target in enumerate(["vllm", "gateway", "gateway", "vllm"][: 4 if a.abba else 2]):
                runs[target].append(summary(bench(urls[target], "smollm2", a.model_dir, c, a, out, f"{target}-{i}")))
            for target, rs in runs.items():
                results[target][c] = {k: round(sum(r[k] for r in rs) / len(rs), 3) for k in rs[0]}
        if a.ttft_pairs:
            print(f"  paired TTFT, {a.ttft_pairs} pairs", flush=True)
            results["paired_ttft"] = paired_ttft(urls, a.ttft_pairs)
    finally:
        server.terminate()
        server.wait(60)
    for target, mode, levels_arg in (("naive", "generate", a.naive_levels), ("transformers_cb", "cb", a.cb_levels)):
        if not levels_arg:
            continue
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "helpers" / "naive_server.py"), "--model",
                                 a.model_dir, "--port", str(port), "--mode", mode],
                                stdout=(out / f"{target}.log").open("w"), stderr=subprocess.STDOUT)
        try:
            print(f"starting the transformers server ({mode}) ...", flush=True)
            wait_http(f"http://127.0.0.1:{port}/health", 300)
            for c in (int(x) for x in levels_arg.split(",")):
                results[target][c] = summary(bench(f"http://127.0.0.1:{port}", "smollm2", a.model_dir,
                                                   c, a, out, target))
        finally:
            proc.terminate()
            proc.wait(60)
    write(results, a, levels)


def machine() -> dict:
    """CPU model, the flags that decide kernels and dtype, cores, and the dtype the engine and baselines used."""
    from llmops.hardware import cpu_summary, resolve_dtype

    choice = resolve_dtype("auto")
    return {**cpu_summary(), "dtype": choice.dtype, "dtype_reason": choice.reason,
            "lora": "enable_lora auto: off (no adapters configured for the benchmark)"}


def write(results: dict, a, levels: list[int]) -> None:
    goals = {}
    ref = 32 if 32 in results["naive"] else max(results["naive"], default=None)
    if ref is not None and ref in results["vllm"]:
        ratio = results["vllm"][ref]["output_tok_per_s"] / max(results["naive"][ref]["output_tok_per_s"], 1e-9)
        goals[f"vllm_vs_naive_output_tok_s_at_c{ref}"] = {"value": round(ratio, 2), "goal": ">= 5", "met": ratio >= 5}
    cb_ref = 32 if 32 in results["transformers_cb"] else max(results["transformers_cb"], default=None)
    if cb_ref is not None and cb_ref in results["vllm"]:
        ratio = results["vllm"][cb_ref]["output_tok_per_s"] / max(
            results["transformers_cb"][cb_ref]["output_tok_per_s"], 1e-9)
        goals[f"vllm_vs_transformers_cb_output_tok_s_at_c{cb_ref}"] = {"value": round(ratio, 2), "goal": ">= 3",
                                                                      "met": ratio >= 3}
    if 32 in results["vllm"] and "avx512f" not in machine()["flags"]:  # #14: an AVX2-only 2-core machine
        tok = results["vllm"][32]["output_tok_per_s"]
        goals["vllm_output_tok_s_c32_avx2"] = {"value": tok, "goal": ">= 150", "met": tok >= 150}
    paired = results.get("paired_ttft")
    if paired:
        goals["gateway_extra_ttft_p50_ms_paired"] = {"value": paired["extra_ttft_p50_ms"], "goal": "<= 5",
                                                     "met": paired["extra_ttft_p50_ms"] <= 5}
        goals["gateway_extra_first_event_p50_ms_paired"] = {"value": paired["extra_first_event_p50_ms"],
                                                            "goal": "<= 5",
                                                            "met": paired["extra_first_event_p50_ms"] <= 5}
    for c in levels:
        g, v = results["gateway"].get(c), results["vllm"].get(c)
        if g and v:
            share = g["output_tok_per_s"] / v["output_tok_per_s"]
            extra = g["ttft_p50_ms"] - v["ttft_p50_ms"]
            goals[f"gateway_throughput_share_c{c}"] = {"value": round(share, 3), "goal": ">= 0.95",
                                                       "met": share >= 0.95}
            goals[f"gateway_extra_ttft_p50_ms_c{c}"] = {"value": round(extra, 2), "goal": "<= 5",
                                                        "met": extra <= 5}
    payload = {"workload": {"input_len": a.input_len, "output_len": a.output_len, "range_ratio": a.range_ratio,
                            "arrivals": (f"Poisson, {a.rate_per_slot} x concurrency req/s" if a.rate_per_slot > 0
                                         else "all at once (rate inf), capped by the concurrency"),
                            "client": f"vllm bench serve ({API[a.api][0]} {API[a.api][1]}, streaming, ignore_eos)"},
               "results": results, "goals": goals, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=2))
    lines = ["# Serving benchmark", "", f"Workload: {payload['workload']}", "", f"Machine: {payload['machine']}", "",
             "| target | concurrency | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in ("gateway", "vllm", "naive", "transformers_cb"):
        for c, r in sorted(results[target].items()):
            if not isinstance(r, dict):
                continue
            lines.append(f"| {target} | {c} | {r['requests_per_s']} | {r['output_tok_per_s']} | {r['ttft_p50_ms']} | "
                         f"{r['ttft_p99_ms']} | {r['itl_p50_ms']} | {r['itl_p99_ms']} |")
    if paired:
        lines += ["", f"Paired unloaded TTFT ({paired['pairs']} short streamed requests, each sent to vLLM and "
                  "through the gateway back to back, order alternating): vLLM p50 "
                  f"{paired['vllm_ttft_p50_ms']} ms, gateway p50 {paired['gateway_ttft_p50_ms']} ms; the gateway's "
                  f"extra TTFT (first text) per pair: median {paired['extra_ttft_p50_ms']} ms, "
                  f"p90 {paired['extra_ttft_p90_ms']} ms; to the first event (the relay alone, before the "
                  f"output rails' hold-back): median {paired['extra_first_event_p50_ms']} ms."]
    write_markdown(a.name, lines + goal_table(goals))


def goal_table(goals: dict) -> list[str]:
    """The goals as Markdown table lines (after a blank line); none when there are no goals."""
    if not goals:
        return []
    return ["", "| goal | value | target | met |", "| --- | --- | --- | --- |"] + [
        f"| {k} | {v['value']} | {v['goal']} | {'yes' if v['met'] else 'NO'} |" for k, v in goals.items()]


def write_markdown(name: str, lines: list[str]) -> None:
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
