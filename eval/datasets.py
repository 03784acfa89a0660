"""Evaluation datasets: JSONL rows validated with line numbers, fingerprinted by sha256.

A row has ``question`` and optionally ``reference`` (answer), ``contexts`` (passages given to the
model), ``reference_contexts`` (passages retrieval should find), ``cited`` (passage numbers that
support the answer), ``expected`` (``refuse`` / ``redact`` / ``allow`` for safety sets) and ``tags``.
Other fields are ignored, so a fine-tuning file with those fields (the shipped context-QA set) is
also an eval set. Example::

    ds = load_dataset("examples/eval/rag_qa.jsonl")
    print(ds.name, len(ds.rows), ds.sha256[:12])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import LLMOpsError


class DatasetError(LLMOpsError):
    """An eval dataset that cannot be used; the run does not start."""


class EvalRow(BaseModel):
    """One evaluation sample."""

    model_config = ConfigDict(extra="ignore")

    id: str
    question: str = Field(min_length=1)
    reference: str | None = None
    contexts: list[str] = Field(default_factory=list)
    reference_contexts: list[str] = Field(default_factory=list)
    cited: list[int] = Field(default_factory=list)
    expected: Literal["refuse", "redact", "allow"] | None = None
    tags: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class EvalDataset:
    name: str
    path: str
    sha256: str
    rows: list[EvalRow]


def load_dataset(path: str | Path, where: dict[str, object] | None = None, limit: int | None = None,
                 name: str | None = None) -> EvalDataset:
    """Read and validate a JSONL eval set; ``where`` keeps rows whose raw fields equal the values.

    Rows without an ``id`` get ``<line number>``. The sha256 covers the selected rows after
    ``where`` and ``limit`` (so a filtered view of a file has its own fingerprint).

    Raises:
        DatasetError: missing file, invalid JSON/UTF-8, invalid rows or duplicate ids (all listed with
            line numbers), or no rows selected.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"Eval dataset {p} does not exist.")
    rows, problems, ids = [], [], {}
    digest = hashlib.sha256()
    for n, raw in enumerate(p.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.append(f"line {n}: not UTF-8 (byte {e.start})")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected a JSON object")
            continue
        if where and any(obj.get(k) != v for k, v in where.items()):
            continue
        obj.setdefault("id", str(n))
        obj["id"] = str(obj["id"])
        try:
            row = EvalRow.model_validate(obj)
        except ValidationError as e:
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"])
                problems.append(f"line {n}: {field}: {err['msg']}")
            continue
        if row.id in ids:
            problems.append(f"line {n}: duplicate id {row.id!r} (first on line {ids[row.id]})")
            continue
        ids[row.id] = n
        rows.append((row, raw.strip()))
    if problems:
        more = f" (and {len(problems) - 15} more)" if len(problems) > 15 else ""
        raise DatasetError(f"{p}: {len(problems)} problem(s){more}; the run does not start:\n  "
                           + "\n  ".join(problems[:15]))
    if limit:
        rows = rows[:limit]
    if not rows:
        raise DatasetError(f"{p}: no rows selected" + (f" with where={where}" if where else "") + ".")
    for _, raw in rows:  # the fingerprint covers exactly the rows evaluated
        digest.update(raw + b"\n")
    return EvalDataset(name or p.stem, str(p), digest.hexdigest(), [r for r, _ in rows])
