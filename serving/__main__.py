"""`llmops serve`: vLLM engines behind the OpenAI-compatible gateway.

Not built yet (issue #4): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "llmops serve") -> int:
    return not_built(prog, 4, "vLLM engines behind the OpenAI-compatible gateway", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
