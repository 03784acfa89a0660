"""CPU thread layout, OpenMP preload and LoRA cost of the vLLM engine on a small machine, one run.

Part 1, layouts (gateway and engine on the same machine, as `make serve` runs them): the gateway
started with the default serving config, only the engine's CPU settings changed per variant, load sent
through the gateway with `vllm bench serve`. Variants: vLLM's default (`auto`: one core reserved for its
front end, OpenMP on the rest), `auto` with no core reserved, `nobind` (no pinning, OpenMP on every
core), and the same with Intel OpenMP preloaded (from the `intel-openmp` package) where present. Each
variant runs twice, in A..Z Z..A order, averaged: a 2-core machine drifts during a run.

Part 2, LoRA cost (bare engine, the chosen layout): base model with LoRA off, base model with LoRA on
(one rank-16 adapter loaded), and the adapter itself, with the project's CPU LoRA ops
(serving/vllm_lora_cpu.py) and with vLLM's own (``LLMOPS_VLLM_LORA_OPS=vllm``).

Writes benchmarks/results/cpu_layout.json and .md with the machine's CPU flags.

    python benchmarks/cpu_layout.py            # about 25 min here
    python benchmarks/cpu_layout.py --quick    # one pass, concurrency 8 only (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import KEY, bench, free_port, goal_table, summary, wait_http, write_markdown  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def iomp_path() -> str | None:
    """libiomp5.so from the intel-openmp wheel, if any (serving.engine.intel_openmp_library's lookup: that
    package cannot be imported here, where benchmarks/serving.py holds the name ``serving``)."""
    for folder in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        hit = folder / "libiomp5.so"
        if hit.exists():
            return str(hit)
    return None


def layouts() -> dict[str, dict]:
    """Variant name -> (serving config overrides, extra environment)."""
    out = {
        "auto (vLLM default: 1 core reserved)": {"overrides": [], "env": {}},
        "auto, 0 reserved": {"overrides": ["engines.0.cpu_reserved_cores=0"], "env": {}},
        "nobind": {"overrides": ["engines.0.cpu_threads_bind=nobind"], "env": {}},
    }
    if iomp_path():
        out["auto, 0 reserved, Intel OpenMP"] = {
            "overrides": ["engines.0.cpu_reserved_cores=0", "engines.0.cpu_openmp=intel"], "env": {}}
    tcmalloc = tcmalloc_path()
    if tcmalloc:  # measured only: the gateway process gets it too (it is in the environment of both)
        out["auto, 0 reserved, Intel OpenMP, tcmalloc"] = {
            "overrides": ["engines.0.cpu_reserved_cores=0", "engines.0.cpu_openmp=intel"],
            "env": {"LD_PRELOAD": tcmalloc}}
    return out


def tcmalloc_path() -> str | None:
    """libtcmalloc_minimal from Debian's libtcmalloc-minimal4 (or $TCMALLOC), if present."""
    for candidate in (os.environ.get("TCMALLOC"), "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def make_adapter(model_dir: str, out: Path, rank: int) -> Path:
    """A rank-``rank`` LoRA adapter on every projection (the fine-tuning default's targets) with non-zero
    weights: its cost is what is measured, not its answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg)
    path = out / "adapter"
    peft_model.save_pretrained(path)
    return path


def serve(overrides: list[str], env_extra: dict, out: Path, label: str,
          model_dir: str) -> tuple[subprocess.Popen, dict]:
    gw_port, engine_port = free_port(), free_port()
    env = dict(os.environ, LLMOPS_API_KEYS=f"bench:{KEY}", HF_HUB_OFFLINE="1", **env_extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmops", "serve", "--config", str(ROOT / "configs/serving/default.yaml"),
         f"port={gw_port}", f"engines.0.port={engine_port}", f"engines.0.model={model_dir}",
         "engines.0.require_key=false", "limits.default_rpm=1000000", "limits.default_tpm=1000000000",
         "auth.keys=[]", f"request_log.path={out / (label + '.sqlite')}", "embeddings.enabled=false", *overrides],
        env=env, stdout=(out / f"{label}.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    urls = {"gateway": f"http://127.0.0.1:{gw_port}", "vllm": f"http://127.0.0.1:{engine_port}"}
    try:
        wait_http(urls["gateway"] + "/ready")
    except Exception:
        proc.terminate()
        raise
    return proc, urls


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def engine_layout_line(log: Path = ROOT / "data" / "logs" / "engine-0.log") -> str:
    """vLLM's own account of its OpenMP binding, from the last start in the engine log."""
    if not log.exists():
        return ""
    lines = [ln.split("]", 1)[-1].strip() for ln in log.read_text(errors="replace").splitlines()
             if "reserve_cpu_num=" in ln or "core ids=" in ln or "VLLM_CPU_OMP_THREADS_BIND=" in ln]
    return " ".join(lines[-3:])[:300]


def warm(url: str, model: str, a, out: Path, label: str) -> None:
    """Not recorded: vLLM compiles kernels for new batch shapes on first use."""
    w = argparse.Namespace(**{**vars(a), "prompts_per_slot": 1, "min_prompts": 1})
    bench(url, model, a.model_dir, max(int(c) for c in a.concurrency.split(",")), w, out, label)


def mean(rows: list[dict]) -> dict:
    return {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--concurrency", default="8,32")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--prompts-per-slot", type=int, default=3)
    p.add_argument("--min-prompts", type=int, default=8)
    p.add_argument("--rate-per-slot", type=float, default=1.0)
    p.add_argument("--passes", type=int, default=2, help="2: A..Z then Z..A, averaged")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--skip-lora", action="store_true")
    p.add_argument("--only-layout", default=None,
                   help="measure this one layout (e.g. 'auto, 0 reserved', the default) and go on to the LoRA part")
    p.add_argument("--name", default="cpu_layout")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.concurrency, a.passes, a.prompts_per_slot, a.output_len = "8", 1, 2, 32
    levels = [int(c) for c in a.concurrency.split(",")]
    out = Path(tempfile.mkdtemp(prefix="bench-layout-"))
    variants = layouts()
    if a.only_layout:
        if a.only_layout not in variants:
            p.error(f"--only-layout: one of {sorted(variants)}")
        variants = {a.only_layout: variants[a.only_layout]}
        if a.name == "cpu_layout":  # the full comparison's files stay as they are
            a.name = "cpu_layout_one"
    order = list(variants)
    runs: dict[str, dict[int, list[dict]]] = {v: {c: [] for c in levels} for v in variants}
    notes: dict[str, str] = {}
    for pass_no in range(a.passes):
        for name in (order if pass_no % 2 == 0 else order[::-1]):
            label = f"layout{order.index(name)}-p{pass_no}"
            print(f"[{name}] pass {pass_no + 1}", flush=True)
            proc, urls = serve(variants[name]["overrides"], variants[name]["env"], out, label, a.model_dir)
            try:
                warm(urls["vllm"], "smollm2", a, out, f"{label}-warmup")
                for c in levels:
                    runs[name][c].append(summary(bench(urls["gateway"], "smollm2", a.model_dir, c, a, out, label)))
            finally:
                stop(proc)
            notes[name] = engine_layout_line()
    layout_results = {v: {c: mean(rs) for c, rs in by_c.items()} for v, by_c in runs.items()}
    top = max(levels)
    best = max(layout_results, key=lambda v: layout_results[v][top]["output_tok_per_s"])

    lora_results: dict[str, dict] = {}
    if not a.skip_lora:
        adapter = make_adapter(a.model_dir, out, a.lora_rank)
        best_over = variants[best]["overrides"]
        lora_on = ["engines.0.enable_lora=true", f"engines.0.max_lora_rank={a.lora_rank}",
                   f'engines.0.extra_args=["--lora-modules","bench-adapter={adapter}"]']
        # engine -> (overrides, environment, {result row: model measured on it})
        lora_variants = {
            "LoRA off": (["engines.0.enable_lora=false"], {}, {"base, LoRA off": "smollm2"}),
            "LoRA on": (lora_on, {}, {"base, LoRA on": "smollm2", "adapter (LoRA on)": "bench-adapter"}),
            # the same engine with vLLM's own CPU LoRA ops instead of serving/vllm_lora_cpu.py's
            "LoRA on, vLLM's ops": (lora_on, {"LLMOPS_VLLM_LORA_OPS": "vllm"},
                                    {"adapter, vLLM's own CPU LoRA ops": "bench-adapter"}),
        }
        for pass_no in range(a.passes):
            names = list(lora_variants) if pass_no % 2 == 0 else list(lora_variants)[::-1]
            for name in names:
                over, env, rows = lora_variants[name]
                label = f"lora{list(lora_variants).index(name)}-p{pass_no}"
                print(f"[{name}] pass {pass_no + 1}", flush=True)
                proc, urls = serve([*best_over, *over], {**variants[best]["env"], **env}, out, label, a.model_dir)
                try:
                    for model in rows.values():
                        warm(urls["vllm"], model, a, out, f"{label}-{model}-warmup")
                    for c in levels:
                        for row, model in rows.items():
                            lora_results.setdefault(row, {}).setdefault(c, []).append(
                                summary(bench(urls["vllm"], model, a.model_dir, c, a, out, f"{label}-{model}")))
                finally:
                    stop(proc)
        lora_results = {v: {c: mean(rs) for c, rs in by_c.items()} for v, by_c in lora_results.items()}
    write(a, levels, layout_results, notes, best, lora_results)


def write(a, levels, layout_results, notes, best, lora_results) -> None:
    from llmops.hardware import cpu_summary, resolve_dtype

    choice = resolve_dtype("auto")
    machine = {**cpu_summary(), "dtype": choice.dtype, "dtype_reason": choice.reason}
    goals = {}
    if lora_results and "adapter (LoRA on)" in lora_results:
        for c in levels:
            share = (lora_results["adapter (LoRA on)"][c]["output_tok_per_s"]
                     / lora_results["base, LoRA off"][c]["output_tok_per_s"])
            goals[f"adapter_vs_base_lora_off_c{c}"] = {"value": round(share, 3), "goal": ">= 0.8",
                                                        "met": share >= 0.8}
    payload = {"workload": {"input_len": a.input_len, "output_len": a.output_len, "range_ratio": a.range_ratio,
                            "passes": a.passes, "client": "vllm bench serve (openai-chat, streaming)"},
               "machine": machine, "layouts": layout_results, "engine_log": notes, "best_layout": best,
               "lora": lora_results, "goals": goals}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=2))
    lines = ["# CPU layout and LoRA cost", "", f"Machine: {machine}", "", f"Workload: {payload['workload']}", "",
             "## Thread layout (through the gateway, same machine)", "",
             "| layout | concurrency | output tok/s | TTFT p50 ms | ITL p50 ms | ITL p99 ms |",
             "| --- | --- | --- | --- | --- | --- |"]
    for v, by_c in layout_results.items():
        for c, r in by_c.items():
            lines.append(f"| {v} | {c} | {r['output_tok_per_s']} | {r['ttft_p50_ms']} | {r['itl_p50_ms']} | "
                         f"{r['itl_p99_ms']} |")
    lines += ["", (f"Best at the highest concurrency: **{best}**." if len(layout_results) > 1
                   else f"One layout measured (--only-layout): **{best}**."), ""]
    lines += [f"- {v}: `{n}`" for v, n in notes.items() if n]
    if lora_results:
        lines += ["", "## LoRA cost (bare engine, best layout)", "",
                  "| engine / model | concurrency | output tok/s | TTFT p50 ms | ITL p50 ms |",
                  "| --- | --- | --- | --- | --- |"]
        for v, by_c in lora_results.items():
            for c, r in by_c.items():
                lines.append(f"| {v} | {c} | {r['output_tok_per_s']} | {r['ttft_p50_ms']} | {r['itl_p50_ms']} |")
    write_markdown(a.name, lines + goal_table(goals))


if __name__ == "__main__":
    main()
