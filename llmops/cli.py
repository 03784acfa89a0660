"""The ``llmops`` umbrella command: one entry point dispatching to each module's CLI.

``llmops finetune ...`` and ``python -m finetune ...`` run the same code. Only argparse and the
target module are imported, so ``llmops --help`` answers at once::

    llmops --help
    llmops assets prepare
    llmops registry versions smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from llmops.errors import LLMOpsError

# subcommand -> (module whose main(argv) runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("llmops.assets_cli", "prepare and verify the offline default models"),
    "registry": ("llmops.registry_cli", "list, resolve and alias registry versions; audit log"),
    "finetune": ("finetune.__main__", "LoRA fine-tuning to a registered, servable adapter"),
    "serve": ("serving.__main__", "vLLM engines behind the OpenAI-compatible gateway"),
    "rollout": ("serving.rollout_cli", "canary / shadow rollout of a challenger, decided on live traffic"),
    "rag": ("rag.__main__", "ingest documents into Qdrant, retrieve and answer with citations"),
    "guardrails": ("guardrails.__main__", "check prompts and answers against a guardrail policy"),
    "eval": ("eval.__main__", "evaluate an endpoint or RAG pipeline, report and gate promotion"),
    "classic": ("classic_ml.__main__", "train, register and batch-score tabular models"),
    "drift": ("llmops.monitoring.__main__", "drift reports on tabular data and LLM traffic"),
}


def setup_logging(verbose: bool = False) -> None:
    """Configure logging for a CLI run (library code only creates loggers)."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Offline by default: nothing may be fetched from a model hub or a cost map at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "alembic", "mlflow", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a module's ``main`` with logging set up and user errors turned into exit code 2."""
    setup_logging(verbose=bool(os.environ.get("LLMOPS_DEBUG")))
    try:
        return main(argv)
    except LLMOpsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmops",
        description="LLMOps platform: fine-tune, serve, RAG, guardrails, eval, classic ML, drift "
        "on one MLflow registry. Run `llmops COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``llmops COMMAND [ARGS...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[command][0])
    return run_main(lambda a: module.main(a, prog=f"llmops {command}"), rest)


if __name__ == "__main__":
    sys.exit(main())
