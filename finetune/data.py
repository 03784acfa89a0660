"""Training data for LoRA fine-tuning: load, validate, tokenize with completion-only labels, pack.

Formats (detected from the columns, or set with ``data.format``):

- ``messages``: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``;
  the tokenizer's chat template is applied and only assistant turns are trained;
- ``alpaca``: ``instruction`` / optional ``input`` / ``output``; turned into a user and an
  assistant turn (with the chat template when the tokenizer has one);
- ``text``: plain ``text``; every token is trained.

Example::

    from finetune.data import DataConfig, load_rows, tokenize_rows
    rows, fmt, digest = load_rows(DataConfig(path="examples/finetune/context_qa.jsonl"))
    tokenized = tokenize_rows(tokenizer, rows, fmt, max_length=1024)
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import LLMOpsError
from llmops.registry import sha256_path

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips
ROLES = {"system", "user", "assistant", "tool"}
Format = Literal["auto", "messages", "alpaca", "text"]


class DataError(LLMOpsError):
    """The training data cannot be used as it is (the message names the row and field)."""


class DataConfig(StrictModel):
    """Where the training data is and how to turn it into token sequences."""

    path: str = Field(description="JSONL / JSON / CSV / Parquet file, or a folder saved with datasets' "
                      "save_to_disk.")
    format: Format = Field("auto", description="Row format; auto detects it from the columns.")
    where: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Keep only rows whose columns equal these values, e.g. {split: train}."
    )
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows (after `where`).")
    max_length: int = Field(512, ge=16, description="Tokens per sequence; longer examples are truncated.")
    packing: bool = Field(True, description="Pack several examples into one sequence of up to max_length "
                          "tokens (fewer pad tokens, faster); examples are never split.")
    pad_to_max_length: bool = Field(False, description="Pad every batch to max_length (the naive baseline; "
                                    "off: pad to the longest sequence in the batch).")
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9, description="Share of rows held out for eval loss.")
    seed: int = Field(0, description="Seed for the train/validation split and sampling.")


# ------------------------------------------------------------------ loading
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: line is not valid UTF-8 ({e.reason} at byte {e.start}). "
                                "Re-encode the file as UTF-8.") from e
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno}).") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def _read_any(path: Path) -> list[dict[str, Any]]:
    import datasets

    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many types; the message says what to do
            raise DataError(f"{path} is not a folder written by datasets' save_to_disk: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path} holds splits {list(ds)} but no 'train' split.")
            ds = ds["train"]
        return ds.to_list()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 at byte {e.start}. Re-encode the file as UTF-8.") from e
        except json.JSONDecodeError as e:
            if "Extra data" in e.msg:  # JSON lines under a .json name
                return _read_jsonl(path)
            raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}).") from e
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (or JSON lines).")
        return data
    if suffix in (".csv", ".parquet"):
        kind = "csv" if suffix == ".csv" else "parquet"
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: cannot read as {kind}: {e}") from e
        return ds.to_list()
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet or a "
                    "saved datasets folder.")


def detect_format(rows: list[dict[str, Any]], where: str) -> Format:
    """Which row format ``rows`` are in, from the first row's columns.

    Raises:
        DataError: no known set of columns.
    """
    cols = set(rows[0])
    if "messages" in cols:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "text" in cols:
        return "text"
    raise DataError(
        f"{where}: cannot tell the format from the columns {sorted(cols)}. Expected 'messages' (chat), "
        "'instruction' + 'output' (alpaca) or 'text'; or set data.format."
    )


def validate_row(row: dict[str, Any], fmt: Format, n: int) -> str | None:
    """The problem with row ``n`` (1-based) in format ``fmt``, or None when it is usable."""
    if fmt == "messages":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return f"row {n}: 'messages' must be a non-empty list of {{role, content}} objects"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"row {n}: messages[{i}].role must be one of {sorted(ROLES)}"
            if not isinstance(m.get("content"), str):
                return f"row {n}: messages[{i}].content must be a string"
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            return f"row {n}: no assistant turn with content (nothing to learn from)"
        return None
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                return f"row {n}: '{key}' must be a non-empty string"
        if row.get("input") is not None and not isinstance(row["input"], str):
            return f"row {n}: 'input' must be a string when present"
        return None
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        return f"row {n}: 'text' must be a non-empty string"
    return None


def load_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], Format, str]:
    """Read and validate the dataset; returns ``(rows, format, sha256 of the source)``.

    Raises:
        DataError: a missing path, unreadable file, unknown format, an empty selection, or
            invalid rows (up to ten are listed by row number and field).
    """
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"Training data {path} does not exist (data.path).")
    rows = _read_any(path)
    for key, value in cfg.where.items():
        if rows and key not in rows[0]:
            raise DataError(f"{path}: data.where uses column {key!r}, which the data does not have "
                            f"(columns: {sorted(rows[0])}).")
        rows = [r for r in rows if r.get(key) == value]
    if not rows:
        raise DataError(f"{path}: no rows to train on" + (f" after data.where={cfg.where}" if cfg.where else "")
                        + ".")
    fmt = detect_format(rows, str(path)) if cfg.format == "auto" else cfg.format
    problems = [p for n, r in enumerate(rows, 1) if (p := validate_row(r, fmt, n))]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataError(f"{path}: {len(problems)} invalid row(s) for format {fmt!r}{more}:\n  "
                        + "\n  ".join(problems[:10]))
    if cfg.max_samples:
        rows = random.Random(cfg.seed).sample(rows, min(cfg.max_samples, len(rows)))
    return rows, fmt, sha256_path(path)


# ---------------------------------------------------------- tokenization
@dataclass
class TokenizedSet:
    """Token sequences with labels, plus what happened on the way."""

    examples: list[dict[str, list[int]]]
    truncated: int = 0
    dropped: int = 0  # examples with no trained token left after truncation
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for x in e["labels"] if x != IGNORE) for e in self.examples)


def to_messages(row: dict[str, Any], fmt: Format) -> list[dict[str, str]]:
    """A row of format ``messages`` or ``alpaca`` as a chat message list."""
    if fmt == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    prompt = row["instruction"].strip()
    if row.get("input"):
        prompt += "\n\n" + row["input"].strip()
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` with the chat template; return the text and the character spans to train.

    A span runs from where the template would start the assistant's reply to the end of that turn
    (so the end-of-turn token is learned, and the model learns to stop).
    """
    text = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if text.startswith(prefix) and text.startswith(upto):
            start, end = len(prefix), len(upto)
        else:  # templates that rewrite earlier turns: find the content itself
            start = text.find(m["content"], spans[-1][1] if spans else 0)
            if start < 0:
                continue
            end = start + len(m["content"])
        if end > start:
            spans.append((start, end))
    return text, spans


def _alpaca_plain(row: dict[str, Any], eos: str) -> tuple[str, list[tuple[int, int]]]:
    prompt = f"### Instruction:\n{row['instruction'].strip()}\n\n"
    if row.get("input"):
        prompt += f"### Input:\n{row['input'].strip()}\n\n"
    prompt += "### Response:\n"
    text = prompt + row["output"] + eos
    return text, [(len(prompt), len(text))]


def encode_row(tokenizer: Any, row: dict[str, Any], fmt: Format) -> dict[str, list[int]]:
    """Tokens and labels for one row; labels are IGNORE outside the trained spans."""
    eos = tokenizer.eos_token or ""
    if fmt == "text":
        text, spans = row["text"] + eos, [(0, len(row["text"]) + len(eos))]
    elif tokenizer.chat_template:
        text, spans = assistant_spans(tokenizer, to_messages(row, fmt))
    elif fmt == "alpaca":
        text, spans = _alpaca_plain(row, eos)
    else:
        raise DataError("The tokenizer has no chat template, so 'messages' rows cannot be rendered. Use a "
                        "chat model (or add a chat_template to its tokenizer_config.json), or format "
                        "'alpaca' / 'text'.")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(s < se and e > ss for ss, se in spans) if e > s else False
        labels.append(tok if inside else IGNORE)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def tokenize_rows(tokenizer: Any, rows: list[dict[str, Any]], fmt: Format, max_length: int) -> TokenizedSet:
    """Encode every row, truncating to ``max_length`` (counted) and dropping rows left with no target."""
    from tqdm.auto import tqdm

    out = TokenizedSet([])
    for row in tqdm(rows, desc="tokenizing", unit="row", leave=False, mininterval=1.0):
        ex = encode_row(tokenizer, row, fmt)
        if len(ex["input_ids"]) > max_length:
            out.truncated += 1
            ex = {k: v[:max_length] for k, v in ex.items()}
        if all(x == IGNORE for x in ex["labels"]):
            out.dropped += 1
            continue
        out.examples.append(ex)
    if out.truncated:
        log.warning("%d of %d examples were longer than max_length=%d and were truncated", out.truncated,
                    len(rows), max_length)
    if out.dropped:
        log.warning("%d examples had no trained token left after truncation and were dropped; raise "
                    "data.max_length", out.dropped)
    out.stats = {"rows": len(rows), "examples": len(out.examples), "truncated": out.truncated,
                 "dropped": out.dropped, "tokens": sum(len(e["input_ids"]) for e in out.examples),
                 "trained_tokens": out.trained_tokens}
    return out


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy first-fit-decreasing packing of whole examples into sequences of ``max_length`` tokens.

    ``position_ids`` restart at 0 for every packed example, so each keeps its own positions.
    Examples are never split, so no example loses its context.
    """
    bins: list[dict[str, list[int]]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e["input_ids"])):
        n = len(ex["input_ids"])
        i = next((j for j, free in enumerate(room) if n <= free), None)
        if i is None:
            bins.append({"input_ids": [], "labels": [], "position_ids": []})
            room.append(max_length)
            i = len(bins) - 1
        bins[i]["input_ids"] += ex["input_ids"]
        bins[i]["labels"] += ex["labels"]
        bins[i]["position_ids"] += list(range(n))
        room[i] -= n
    return bins


def split_train_val(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle and split off ``val_fraction`` of the examples (at least one when the fraction is > 0)."""
    items = list(examples)
    random.Random(seed).shuffle(items)
    if val_fraction <= 0 or len(items) < 2:
        return items, []
    n_val = max(1, round(len(items) * val_fraction))
    return items[n_val:], items[:n_val]


class Collator:
    """Pads a batch: to its longest sequence, or to ``max_length`` for the naive baseline.

    Packed batches (with ``position_ids``) carry no attention mask on purpose, see ``__call__``.
    """

    def __init__(self, pad_id: int, max_length: int | None = None) -> None:
        self.pad_id, self.max_length = pad_id, max_length

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = self.max_length or max(len(b["input_ids"]) for b in batch)
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
        packed = "position_ids" in batch[0]
        if packed:
            out["position_ids"] = []
        for b in batch:
            n = len(b["input_ids"])
            pad = width - n
            out["input_ids"].append(b["input_ids"] + [self.pad_id] * pad)
            out["labels"].append(b["labels"] + [IGNORE] * pad)
            out["attention_mask"].append([1] * n + [0] * pad)
            if packed:
                out["position_ids"].append(b["position_ids"] + list(range(pad)))
        if packed:
            # No 2D mask: transformers then builds a block-diagonal causal mask from the restarting
            # position_ids, so packed examples do not attend to each other.
            del out["attention_mask"]
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
