"""``make demo``: the lifecycle on the embedded default models.

Stages today: (1) prepare the offline models and register them, (2) classic ML: train and
register the credit-risk model, score a shifted batch, write its drift report. The LLM stages
(fine-tune, eval, serve, RAG, request-log drift) join as their modules land (issue #9). Each
stage is a separate ``llmops`` command, so the demo uses the modules exactly as a user would::

    python -m llmops.demo
"""

from __future__ import annotations

import subprocess
import sys
import time

from llmops.errors import LLMOpsError


class StageError(LLMOpsError):
    """A demo stage failed; the message names it and how to recover."""


def stage(number: int, title: str, *cmd: str, ok_codes: tuple[int, ...] = (0,)) -> None:
    print(f"\n== {number}. {title}\n   $ llmops {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    code = subprocess.run([sys.executable, "-m", "llmops", *cmd]).returncode
    if code not in ok_codes:
        raise StageError(f"Stage {number} ({title}) failed with exit code {code}. Fix what it printed "
                         f"above and run `make demo` again (finished stages are reused).")
    print(f"   done in {time.monotonic() - start:.1f} s", flush=True)


def main(argv=None) -> int:
    print("== 1. offline default models, registered with their source hashes", flush=True)
    from llmops.assets import AssetsConfig, prepare, register_defaults
    from llmops.config import load_config
    from llmops.registry import Registry

    registry = Registry()
    result = prepare(load_config("configs/assets/default.yaml", AssetsConfig))
    for name, version in register_defaults(result, registry).items():
        print(f"   registered {name}/{version.version} aliases={list(version.aliases)}")
    stage(2, "classic ML: train and register credit-risk", "classic", "train",
          "--config", "configs/classic/default.yaml")
    stage(3, "classic ML: a shifted scoring batch", "classic", "make-data", "--rows", "2000",
          "--shift", "1.0", "--out", "data/classic/current.parquet")
    stage(4, "classic ML: score it (rows carry the model version)", "classic", "predict",
          "--model", "credit-risk@champion", "--input", "data/classic/current.parquet",
          "--output", "outputs/classic/scored.parquet")
    stage(5, "monitoring: drift report on the shifted batch (exit 1 = drift found, as expected)",
          "drift", "--config", "configs/drift/default.yaml", ok_codes=(0, 1))

    print("\n== summary")
    for name in registry.models():
        for v in registry.versions(name):
            lineage = {k.removeprefix("lineage."): val[:16] for k, val in v.tags.items()
                       if k.startswith("lineage.")}
            print(f"   {v.ref:28s} {v.kind:14s} aliases={list(v.aliases)} {lineage}")
    print("   drift report: reports/drift/drift_report.html")
    print(f"   registry: {registry.tracking_uri}  (browse: make mlflow-ui)")
    print("   serving: make serve (then make stop); not yet in the demo: fine-tune, eval, RAG (issue #9)")
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
