"""``make demo``: the lifecycle on the embedded default models.

Stages that exist today: prepare the offline models (done by ``make assets``) and register them
in the local MLflow registry with lineage. The later stages (classic ML, fine-tune, eval, serve,
RAG, drift) join as their modules land (issue #9). Run::

    python -m llmops.demo
"""

from __future__ import annotations

import sys

from llmops.cli import run_main


def main(argv=None) -> int:
    from llmops.assets import AssetsConfig, prepare, register_defaults
    from llmops.config import load_config
    from llmops.registry import Registry

    print("== 1. offline default models")
    result = prepare(load_config("configs/assets/default.yaml", AssetsConfig))
    print(f"   base LLM   {result.base_llm}\n   embeddings {result.embedding}")
    print("== 2. registry")
    registry = Registry()
    for name, version in register_defaults(result, registry).items():
        lineage = {k: v for k, v in version.tags.items() if k.startswith("lineage.")}
        print(f"   {name}/{version.version} aliases={list(version.aliases)} {lineage}")
    print("== not yet in the demo: classic ML, fine-tune, eval, serve, RAG, drift (issue #9)")
    print(f"Registry: {registry.tracking_uri}  (browse it with `make mlflow-ui`)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
