"""`llmops rag`: RAG over Qdrant.

Not built yet (issue #5): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "llmops rag") -> int:
    return not_built(prog, 5, "RAG over Qdrant", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
