"""`llmops eval`: LLM evaluation, reports and gated promotion.

Not built yet (issue #7): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "llmops eval") -> int:
    return not_built(prog, 7, "LLM evaluation, reports and gated promotion", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
