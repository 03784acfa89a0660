"""What a shadow rollout costs the champion's users: the same load through the gateway on a champion adapter,
without a rollout and with a shadow rollout of a challenger (every request / a sample mirrored), in A-B-B-A
order per setting, in one run. Writes benchmarks/results/rollout_shadow.json and .md.

The gateway sends shadow requests after the champion answered, through a bounded queue drained by
``rollout.shadow_concurrency`` workers (default 1): on a small machine the engine's extra work is bounded by
that, and what the queue cannot take is dropped and counted. A shadow also yields to users
(``rollout.shadow_max_inflight``, 4): it waits while more user requests are in flight. At concurrency 8 the
engine is saturated and the shadows wait for the end of the run (the backlog column); at concurrency 2 they run
during it. Goal (issue #18): <= 5% of the champion's
throughput and <= 5 ms of its p50 TTFT.

    python benchmarks/rollout_shadow.py               # concurrency 8 and 2, shadow 10% and 100% (about 17 min)
    python benchmarks/rollout_shadow.py --quick       # fewer prompts (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _serving_benchmark():
    """benchmarks/serving.py under another name: this script also imports the project's `serving` package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_sb = _serving_benchmark()
KEY, bench, free_port, goal_table, machine, summary, wait_http, write_markdown = (
    _sb.KEY, _sb.bench, _sb.free_port, _sb.goal_table, _sb.machine, _sb.summary, _sb.wait_http, _sb.write_markdown)

RESULTS = ROOT / "benchmarks" / "results"
NAME = "bench-qa"


def make_adapter(base_dir: str, out: Path, seed: int) -> Path:
    """A LoRA adapter for the base model (q/v projections, small random B): a champion that answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.002)
    model.save_pretrained(out)
    return out


def shadow_counts(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for m in re.finditer(r'^llmops_shadow_requests_total\{[^}]*outcome="(\w+)"[^}]*\} ([0-9.e+]+)$', text, re.M):
        counts[m.group(1)] = counts.get(m.group(1), 0) + float(m.group(2))
    return counts


def drain(base: str, timeout: float = 600) -> float:
    """Wait until no shadow request is queued or in flight; the seconds it took (the deferred shadow work)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = re.search(r"^llmops_shadow_pending ([0-9.e+-]+)$", httpx.get(base + "/metrics", timeout=10).text, re.M)
        if m is None or float(m.group(1)) <= 0:
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    raise RuntimeError("the shadow queue did not drain")


def set_shadow(store, base: str, percent: float) -> None:
    """Stop any running rollout, start one with ``percent`` shadow (none for 0), and wait for the gateway."""
    from serving.rollout import manual, start_rollout

    current = store.get(NAME)
    if current is not None and current.running:
        manual(store, NAME, "stop", "benchmark step")
    want = None
    if percent > 0:
        want = start_rollout(store, NAME, canary=0, shadow=percent, min_requests=10**9, max_minutes=10**6).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cards = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]
        got = ({c["id"]: c for c in cards}[NAME].get("rollout") or {}).get("id")
        if got == want:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the gateway did not follow the rollout change to shadow {percent}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--concurrency", default="8,2", help="client concurrencies, comma-separated")
    p.add_argument("--shadow", default="10,100", help="shadow percentages to compare with no rollout")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--prompts-per-slot", type=int, default=4)
    p.add_argument("--min-prompts", type=int, default=16)
    p.add_argument("--rate-per-slot", type=float, default=1.0)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.prompts_per_slot, a.output_len, a.shadow = 2, 32, "100"
    levels = [float(x) for x in a.shadow.split(",")]
    concurrencies = [int(x) for x in a.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    from llmops.registry import Registry, RegistryConfig
    from serving.rollout import RolloutStore

    registry = Registry(RegistryConfig(root=str(tmp / "mlruns")))
    champion = make_adapter(a.model_dir, tmp / "v1", seed=1)
    registry.register(NAME, champion, kind="adapter", aliases=["champion"])
    registry.register(NAME, make_adapter(a.model_dir, tmp / "v2", seed=2), kind="adapter", aliases=["challenger"])
    store = RolloutStore(registry)

    port = free_port()
    env = dict(os.environ, LLMOPS_API_KEYS=f"bench:{KEY}", HF_HUB_OFFLINE="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "llmops", "serve", "--config", str(ROOT / "configs/serving/default.yaml"),
         f"port={port}", "engines.0.port=0", f"engines.0.model={a.model_dir}", f"models_dir={ROOT / 'models'}",
         "limits.default_rpm=1000000", "limits.default_tpm=1000000000", "auth.keys=[]",
         f"request_log.path={tmp / 'requests.sqlite'}", "embeddings.enabled=false", "rollout_poll_s=1",
         "rollout.decide=false", f"adapters=[{{registry_name: {NAME}, alias: champion, served_name: {NAME}}}]"],
        env=env, stdout=(tmp / "serve.log").open("w"), stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, dict] = {}
    try:
        print("starting gateway + vLLM ...", flush=True)
        wait_http(base + "/ready")
        bench(base, NAME, a.model_dir, concurrencies[0], a, tmp, "warmup")
        for c in concurrencies:
            for percent in levels:
                runs: dict[str, list[dict]] = {"none": [], "shadow": []}
                for i, mode in enumerate(["none", "shadow", "shadow", "none"]):
                    set_shadow(store, base, percent if mode == "shadow" else 0)
                    before = shadow_counts(base)
                    r = summary(bench(base, NAME, a.model_dir, c, a, tmp, f"s{percent:g}-{mode}-{i}"))
                    during = shadow_counts(base)  # what ran while the users' load was on
                    r["shadow_drain_s"] = drain(base)  # before the next run: its users must not meet this backlog
                    after = shadow_counts(base)
                    r["shadow_ok_during_run"] = during.get("ok", 0) - before.get("ok", 0)
                    r.update({f"shadow_{k}": after.get(k, 0) - before.get(k, 0) for k in ("ok", "error", "dropped")})
                    runs[mode].append(r)
                results[f"shadow_{percent:g}_c{c}"] = {
                    mode: {k: round(sum(x[k] for x in rs) / len(rs), 3) for k in rs[0]} for mode, rs in runs.items()}
        set_shadow(store, base, 0)
    finally:
        server.terminate()
        server.wait(60)
    write(results, a, concurrencies)


def write(results: dict, a, concurrencies: list[int]) -> None:
    from serving.rollout import RolloutConfig

    cfg = RolloutConfig()
    goals = {}
    for level, r in results.items():
        share = r["shadow"]["output_tok_per_s"] / max(r["none"]["output_tok_per_s"], 1e-9)
        extra = r["shadow"]["ttft_p50_ms"] - r["none"]["ttft_p50_ms"]
        goals[f"{level}_throughput_share"] = {"value": round(share, 3), "goal": ">= 0.95",
                                                               "met": share >= 0.95}
        goals[f"{level}_extra_ttft_p50_ms"] = {"value": round(extra, 2), "goal": "<= 5",
                                                                "met": extra <= 5}
    payload = {"workload": {"model": f"{NAME} (a LoRA adapter on {Path(a.model_dir).name})",
                            "concurrency": concurrencies, "input_len": a.input_len, "output_len": a.output_len,
                            "range_ratio": a.range_ratio, "client": "vllm bench serve (openai-chat, streaming)",
                            "order": "A-B-B-A per shadow level (none, shadow, shadow, none), averaged",
                            "shadow": f"canary 0, shadow_concurrency {cfg.shadow_concurrency}, shadow_queue "
                                      f"{cfg.shadow_queue}, shadow_max_inflight {cfg.shadow_max_inflight} (defaults)"},
               "results": results, "goals": goals,
               "machine": {**machine(), "lora": "enable_lora auto: on (the champion and challenger are adapters)"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout_shadow.json").write_text(json.dumps(payload, indent=2))
    lines = ["# Shadow rollout: what it costs the champion's users", "", f"Workload: {payload['workload']}", "",
             f"Machine: {payload['machine']}", "",
             "| setting | rollout | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | shadow ok during "
             "the run | shadow ok | shadow dropped | shadow errors | backlog drained after the run (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for level, r in results.items():
        for mode in ("none", "shadow"):
            x = r[mode]
            lines.append(f"| {level} | {mode} | {x['requests_per_s']} | {x['output_tok_per_s']} | {x['ttft_p50_ms']} | "
                         f"{x['ttft_p99_ms']} | {x['itl_p50_ms']} | {x['shadow_ok_during_run']} | {x['shadow_ok']} | "
                         f"{x['shadow_dropped']} | {x['shadow_error']} | {x['shadow_drain_s']} |")
    write_markdown("rollout_shadow", lines + goal_table(goals))


if __name__ == "__main__":
    main()
