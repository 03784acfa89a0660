"""`llmops guardrails`: Guardrails for prompts and answers.

Not built yet (issue #6): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "llmops guardrails") -> int:
    return not_built(prog, 6, "Guardrails for prompts and answers", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
