"""`finetune`: LoRA fine-tuning to a registered, servable adapter.

Not built yet (issue #3): `--help` works, running says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llmops.cli import not_built, run_main


def main(argv: Sequence[str] | None = None, prog: str = "finetune") -> int:
    return not_built(prog, 3, "LoRA fine-tuning to a registered, servable adapter", argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
