"""The README's commands exist in the Makefile, and CI runs exactly `make test`."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", text, re.M))


def test_readme_make_commands_exist():
    readme = (REPO / "README.md").read_text()
    used = set(re.findall(r"`make ([a-z-]+)", readme))
    assert {"demo", "test"} <= used
    assert used <= targets(), used - targets()


def test_required_targets_and_ci():
    required = {"setup", "assets", "test", "lint", "demo", "finetune", "serve", "eval", "rag-ingest",
                "train-classic", "drift", "bench", "mlflow-ui", "clean", "stop"}
    assert required <= targets()
    assert "make test" in (REPO / ".ci" / "run").read_text()
