"""``llmops assets``: prepare and verify the offline default models.

Example::

    llmops assets prepare                      # build what is missing, verify the rest
    llmops assets prepare --force              # rebuild everything
    llmops assets prepare --register           # and register the base models (alias champion)
    llmops assets verify
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None, prog: str = "llmops assets") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["prepare", "verify"], help="what to do")
    parser.add_argument("--config", default=None, help="YAML file (default: built-in defaults)")
    parser.add_argument("--force", action="store_true", help="rebuild even verified copies")
    parser.add_argument("--register", action="store_true",
                        help="register the base LLM and embedding model in the registry (idempotent)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    from llmops.assets import AssetsConfig, prepare, verify
    from llmops.config import load_config

    cfg = load_config(args.config, AssetsConfig, args.overrides)
    if args.action == "verify":
        root = Path(cfg.models_dir)
        for name in (cfg.base_llm.name, cfg.embedding.name, cfg.tiny.name):
            verify(root / name)
            print(f"ok  {root / name}")
        return 0
    result = prepare(cfg, force=args.force)
    for label, path in (("base LLM", result.base_llm), ("embeddings", result.embedding),
                        ("tiny test model", result.tiny)):
        print(f"{label:16s} {path}")
    print("built: " + (", ".join(result.built) or "nothing (all verified)"))
    if args.register:
        from llmops.assets import register_defaults
        from llmops.registry import Registry

        for name, version in register_defaults(result, Registry()).items():
            print(f"registered {name}: {version.ref} aliases={list(version.aliases)}")
    return 0


if __name__ == "__main__":
    from llmops.cli import run_main

    sys.exit(run_main(main))
