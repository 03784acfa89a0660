"""The shipped RAG eval set stays in step with the corpus it is asked over (docs/)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_every_reference_context_of_the_rag_set_is_text_of_the_docs():
    norm = " ".join
    docs = norm("\n".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))).split())
    missing = [(row["id"], ctx) for line in (ROOT / "examples/eval/rag_qa.jsonl").read_text().splitlines()
               for row in [json.loads(line)] for ctx in row.get("reference_contexts") or []
               if norm(ctx.split()) not in docs]
    assert missing == [], "reference contexts no longer in docs/ (edit the row or the doc): " + repr(missing[:5])
