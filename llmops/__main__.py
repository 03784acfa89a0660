"""``python -m llmops`` is the ``llmops`` command."""

import sys

from llmops.cli import main

if __name__ == "__main__":
    sys.exit(main())
