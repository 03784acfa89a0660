"""`llmops classic`: Classic tabular models.

Not built yet (issue #8): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "llmops classic") -> int:
    return not_built(prog, 8, "Classic tabular models", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
