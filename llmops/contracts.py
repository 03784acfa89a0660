"""The shapes that cross package boundaries, declared once: every feature package depends on these,
not on another package's internals.

- :class:`RegistryAPI`: what jobs use of the registry (``llmops.registry.Registry`` implements it).
- :class:`VerdictLike`, :class:`StreamChecker`, :class:`GuardHook`: what the gateway and the RAG
  pipeline use of a guard (``guardrails.guard.Guard`` implements them; so does a test's fake).
- :class:`VerdictRecord`: one guardrail decision as it is logged, the same for gateway and RAG.
- :class:`RequestRecord` + :data:`REQUEST_LOG_SCHEMA` + :func:`read_request_log`: the request log
  the gateway writes and monitoring reads (one schema, one reader).
- :class:`EmbeddingStageSpec` + :data:`SECOND_STAGE_FILE`: a text classifier's embedding stage as
  classic_ml writes it into the registered folder and the injection rail reads it.

Example::

    from llmops.contracts import VerdictRecord, read_request_log
    rec = VerdictRecord.of("input", verdict)          # from any VerdictLike
    df = read_request_log("data/requestlog/requests.sqlite")
    df["guardrails"][0]                               # [VerdictRecord(stage="input", ...), ...]
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

if TYPE_CHECKING:
    import pandas as pd

    from llmops.registry import AliasMove, Lineage, ModelVersion

Stage = Literal["input", "output"]
Action = Literal["allow", "warn", "redact", "block"]


# ---------------------------------------------------------------------------------------- registry
class RegistryAPI(Protocol):
    """The registry as jobs use it: versions with lineage, aliases with an audit trail, runs."""

    def register(self, name: str, path: str | Path, kind: str, lineage: Lineage | None = None, *,
                 aliases: tuple[str, ...] | list[str] = (), tags: dict[str, str] | None = None,
                 description: str | None = None, run_id: str | None = None,
                 params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 reason: str = "registered") -> ModelVersion: ...

    def resolve(self, ref: str) -> ModelVersion: ...

    def get_version(self, name: str, version: int, with_path: bool = False) -> ModelVersion: ...

    def versions(self, name: str) -> list[ModelVersion]: ...

    def models(self) -> list[str]: ...

    def alias_version(self, name: str, alias: str) -> int | None: ...

    def model_tag(self, name: str, key: str) -> str | None: ...

    def set_model_tag(self, name: str, key: str, value: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: int, *, reason: str,
                  actor: str | None = None) -> AliasMove: ...

    def delete_alias(self, name: str, alias: str, *, reason: str, actor: str | None = None) -> AliasMove: ...

    def last_move(self, name: str, alias: str, *, audited_only: bool = False) -> AliasMove | None: ...

    def unaudited_move(self, name: str, alias: str, *, detected_by: str = "llmops") -> AliasMove | None: ...

    def log_run(self, run_name: str, *, model_ref: str | None = None, params: dict[str, Any] | None = None,
                metrics: dict[str, float] | None = None, artifacts: Sequence[str | Path] = (),
                tags: dict[str, str] | None = None) -> str: ...

    def start_run(self, run_name: str, *, tags: dict[str, str] | None = None,
                  params: dict[str, Any] | None = None) -> str: ...

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_dataset(self, run_id: str, name: str, sha256: str, source: str, *, rows: int,
                    context: str = "training") -> None: ...

    def end_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None: ...

    def runs_for(self, name: str, version: int | None = None) -> list[Any]: ...

    def read_run_artifact(self, run_id: str, path: str) -> str | None: ...


# -------------------------------------------------------------------------------------- guardrails
class FindingLike(Protocol):
    @property
    def rail(self) -> str: ...
    @property
    def label(self) -> str: ...


class VerdictLike(Protocol):
    """A guard's answer. ``text``: the text to use (redacted, or the refusal when blocked);
    ``messages``: the redacted message list of an input check that redacted."""

    @property
    def allowed(self) -> bool: ...
    @property
    def action(self) -> Action: ...
    @property
    def rail(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def findings(self) -> Sequence[FindingLike]: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def messages(self) -> Sequence[dict] | None: ...


class StreamChecker(Protocol):
    """One streamed answer (one choice) checked as it arrives."""

    def feed(self, text: str) -> tuple[str, VerdictLike | None]:
        """Take a chunk; return the text safe to release now and a blocking verdict, if any."""
        ...

    def finish(self) -> tuple[str, VerdictLike]:
        """Release what was held back at the end of the stream, with the whole-answer verdict."""
        ...


class GuardHook(Protocol):
    """What the gateway and the RAG pipeline call. ``model`` (public model name) and ``key`` (API key
    id) select per-model / per-key policies.

    ``blocking_io``: some check makes a network call or runs a model for milliseconds (run it off the
    event loop);
    ``passthrough``: the hook never changes anything (streams can be relayed untouched)."""

    blocking_io: bool
    passthrough: bool

    def check_input(self, messages: list[dict], model: str | None = None,
                    key: str | None = None, tools: list[dict] | None = None) -> VerdictLike:
        """Judge everything the client sent (every role, names, tool calls, ``tools``); a redaction comes
        back as ``verdict.messages`` (and ``verdict.tools``) to forward instead."""
        ...

    def check_output(self, text: str, context: list[str] | None = None, model: str | None = None,
                     key: str | None = None, partial: bool = False) -> VerdictLike:
        """``partial``: a piece of a stream or tool-call arguments (the whole-answer rails skip it)."""
        ...

    def check_embeddings(self, texts: list[str], model: str | None = None, key: str | None = None) -> VerdictLike:
        """Texts sent to /v1/embeddings; a redaction comes back as ``verdict.messages`` ({"content"} per text)."""
        ...

    def stream_checker(self, model: str | None = None, key: str | None = None,
                       whole_answer: bool = True) -> StreamChecker:
        """One checker per streamed text (a choice's answer, or with ``whole_answer=False`` a tool call's
        arguments, which the whole-answer rails skip)."""
        ...

    def checks_output(self, model: str | None = None, key: str | None = None) -> bool:
        """Some output rail applies (streamed logprobs would then show text before it is judged)."""
        ...

    def reask(self, verdict: VerdictLike, messages: list[dict], answer: str, model: str | None = None,
              key: str | None = None) -> dict[str, Any] | None:
        """For an answer that failed a rail which can be fixed by asking again: the request fields
        (``messages``, ``response_format``) of one more try; None when there is nothing to re-ask."""
        ...


@dataclass(frozen=True)
class VerdictRecord:
    """One guardrail decision as logged (request log, RAG answers, metrics labels).

    ``reask``: the answer was asked for again; ``after_stream``: found at the end of a stream,
    after the text had been sent."""

    stage: Stage
    action: str
    rail: str | None
    findings: tuple[str, ...] = ()
    reason: str | None = None
    latency_ms: float | None = None
    reask: bool = False
    after_stream: bool = False

    @classmethod
    def of(cls, stage: Stage, verdict: VerdictLike, *, with_reason: bool = True, **flags: bool) -> VerdictRecord:
        """The record of ``verdict``. ``with_reason=False`` leaves the reason out: a rail's reason may quote
        the checked text (a schema error names the offending value), which a request log must not keep."""
        return cls(stage, verdict.action, verdict.rail, tuple(f.label for f in verdict.findings),
                   verdict.reason if with_reason else None, round(verdict.latency_ms, 3), **flags)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = list(self.findings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerdictRecord:
        """Read a logged record; unknown keys (a newer writer) are ignored, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["findings"] = tuple(kw.get("findings") or ())
        kw.setdefault("stage", "input")
        kw.setdefault("action", "allow")
        kw.setdefault("rail", None)
        return cls(**kw)


# A text part of a message's content marked ``{"type": "text", "text": ..., "llmops_context": true}`` is a
# retrieved passage: guardrails judge it as data (see Guard.check_input), the gateway strips the mark.
CONTEXT_PART_KEY = "llmops_context"
# Content part types (OpenAI / vLLM) whose text the engine renders, and the key that holds it.
TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                  "thinking": "thinking"}


def without_context_marks(messages: list) -> list:
    """``messages`` with the :data:`CONTEXT_PART_KEY` marks taken off their text parts (what an engine gets)."""
    def clean(m: Any) -> Any:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list) or not any(isinstance(p, dict) and CONTEXT_PART_KEY in p for p in content):
            return m
        return {**m, "content": [{k: v for k, v in p.items() if k != CONTEXT_PART_KEY} if isinstance(p, dict) else p
                                 for p in content]}

    return [clean(m) for m in messages]


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: the string, or the ``text`` parts of a list joined
    by spaces (images and other parts carry no text); "" for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# -------------------------------------------------------------------------------- the RAG prompt
# One prompt format for answering from numbered passages: the RAG pipeline sends it, the context-QA
# fine-tuning set is written in it (examples/finetune/build_context_qa.py) and eval's qa suite asks in it.
NO_ANSWER = "I don't know based on the provided context."
CONTEXT_SYSTEM_PROMPT = ("Answer the question using only the numbered context passages. Cite the passages you use "
                         f"as [n]. If the context does not contain the answer, say \"{NO_ANSWER}\"")


def context_messages(question: str, passages: Sequence[str], max_chars: int = 6000,
                     marked: bool = False) -> list[dict[str, Any]]:
    """The chat messages for ``question`` over numbered ``passages`` (whitespace folded; passages are cut
    to fit ``max_chars`` in all, and dropped once fewer than 50 characters are left).

    ``marked``: the user message is a list of text parts, each passage its own part marked with
    :data:`CONTEXT_PART_KEY`, so the gateway's guardrails judge the passages as data and the question as
    the user's words. The engine joins text parts with newlines: the prompt is the same text either way."""
    parts, used = [], 0
    for i, passage in enumerate(passages, 1):
        text = " ".join(passage.split())
        room = max_chars - used
        if room <= 50:
            break
        text = text[:room]
        used += len(text)
        parts.append(f"[{i}] {text}")
    system = {"role": "system", "content": CONTEXT_SYSTEM_PROMPT}
    if not marked:
        text = "Context:\n" + "\n".join(parts) + f"\n\nQuestion: {question.strip()}"
        return [system, {"role": "user", "content": text}]
    content = [{"type": "text", "text": "Context:"},
               *({"type": "text", "text": p, CONTEXT_PART_KEY: True} for p in parts),
               {"type": "text", "text": f"\nQuestion: {question.strip()}"}]
    return [system, {"role": "user", "content": content}]


# ------------------------------------------------------------------------------------- request log
REQUEST_LOG_TABLE = "requests"
REQUEST_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    key_id TEXT,
    model TEXT,
    registry_version TEXT,
    status INTEGER NOT NULL,
    error_code TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    guardrails TEXT,
    prompt_embedding BLOB,
    finish_reason TEXT,
    degenerate INTEGER,
    shadow INTEGER,
    engine_status INTEGER
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    key_id TEXT NOT NULL,
    score REAL NOT NULL,
    comment TEXT,
    PRIMARY KEY (request_id, key_id)
);
"""
# columns added after the first release: a log written before them gets them on open (NULL in old rows)
REQUEST_LOG_ADDED = {"finish_reason": "TEXT", "degenerate": "INTEGER", "shadow": "INTEGER",
                     "engine_status": "INTEGER"}
NO_KEY = ""  # the feedback table's key_id of a gateway without keys (NULLs would not be one key in its primary key)
FEEDBACK_TABLE = "feedback"


def open_request_log_schema(db: sqlite3.Connection) -> None:
    """Create the request log's table, or bring an older one up to date (added columns)."""
    db.executescript(REQUEST_LOG_SCHEMA)
    have = {row[1] for row in db.execute(f"PRAGMA table_info({REQUEST_LOG_TABLE})")}
    for name, kind in REQUEST_LOG_ADDED.items():
        if name not in have:
            try:
                db.execute(f"ALTER TABLE {REQUEST_LOG_TABLE} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:  # another gateway opening the same log added it first
                if "duplicate column" not in str(e):
                    raise
    db.commit()


@dataclass
class RequestRecord:
    """One request as the gateway logs it (a row of the ``requests`` table)."""

    id: str
    ts: float
    endpoint: str
    key_id: str | None = None
    model: str | None = None
    registry_version: str | None = None
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    guardrails: list[VerdictRecord] = field(default_factory=list)
    prompt_embedding: bytes | None = None
    finish_reason: str | None = None  # the first choice's (stop, length, tool_calls, content_filter)
    degenerate: int | None = None  # 1: an answer looped, was empty or in another script (None: not judged)
    shadow: int | None = None  # 1: a shadow answer of a rollout's challenger (recorded, never returned)
    engine_status: int | None = None  # the engine's HTTP status (None: the request never reached an engine)

    @staticmethod
    def columns() -> list[str]:
        return [f.name for f in fields(RequestRecord)]

    def row(self) -> tuple:
        """The values in :meth:`columns` order, as SQLite stores them."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["guardrails"] = json.dumps([g.to_dict() for g in self.guardrails])
        d["stream"] = int(self.stream)
        return tuple(d[c] for c in self.columns())


class RequestLogError(ValueError):
    """The file is missing or is not a request log."""


def read_request_log(path: str | Path, since: float | None = None, *, columns: Sequence[str] | None = None,
                     models: Sequence[str] | None = None) -> pd.DataFrame:
    """The request log as a DataFrame, one row per request in time order, optionally from ``since``.

    Columns are :class:`RequestRecord`'s (``columns``: only these, plus ``ts``); ``guardrails`` holds lists of
    :class:`VerdictRecord`, ``prompt_embedding`` float32 arrays (or None), ``stream`` booleans. ``models``: only
    the rows of these model ids.

    Raises:
        RequestLogError: no such file, or no readable ``requests`` table in it.
    """
    import numpy as np
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise RequestLogError(f"Request log {p} does not exist (the gateway writes it; see request_log.path).")
    known = RequestRecord.columns()
    wanted = known if columns is None else ["ts", *(c for c in columns if c != "ts")]
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ValueError(f"unknown request-log columns: {unknown}")
    where, params = [], []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if models is not None:
        where.append(f"model IN ({', '.join('?' * len(models))})" if models else "0")
        params.extend(models)
    try:
        with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as db:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({REQUEST_LOG_TABLE})")}
            if not have:
                raise sqlite3.OperationalError(f"no such table: {REQUEST_LOG_TABLE}")
            select = ", ".join(c if c in have else f"NULL AS {c}" for c in wanted)  # older logs lack added columns
            q = (f"SELECT {select} FROM {REQUEST_LOG_TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "")
                 + " ORDER BY ts")
            df = pd.read_sql_query(q, db, params=params or None)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        raise RequestLogError(f"{p} is not a request log (no readable '{REQUEST_LOG_TABLE}' table): {e}") from e
    if "guardrails" in df:
        df["guardrails"] = [[VerdictRecord.from_dict(v) for v in json.loads(g or "[]")] for g in df["guardrails"]]
    if "prompt_embedding" in df:
        df["prompt_embedding"] = [np.frombuffer(b, dtype=np.float32) if b is not None else None
                                  for b in df["prompt_embedding"]]
    if "stream" in df:
        df["stream"] = df["stream"].astype(bool)
    return df


def read_feedback(path: str | Path, since: float | None = None) -> pd.DataFrame:
    """User feedback (``POST /v1/feedback``) joined to its request: columns request_id, ts, key_id, score,
    comment, model, registry_version. Feedback counts only from the key that made the request.

    Raises:
        RequestLogError: no such file, or not a request log.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise RequestLogError(f"Request log {p} does not exist (the gateway writes it; see request_log.path).")
    q = (f"SELECT f.request_id, f.ts, f.key_id, f.score, f.comment, r.model, r.registry_version "
         f"FROM {FEEDBACK_TABLE} f JOIN {REQUEST_LOG_TABLE} r ON r.id = f.request_id "
         f"AND COALESCE(r.key_id, '{NO_KEY}') = f.key_id" + (" WHERE r.ts >= ?" if since is not None else "")
         + " ORDER BY f.ts")
    try:
        with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if FEEDBACK_TABLE not in tables:  # a log written before feedback existed
                return pd.DataFrame(columns=["request_id", "ts", "key_id", "score", "comment", "model",
                                             "registry_version"])
            return pd.read_sql_query(q, db, params=(since,) if since is not None else None)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:
        raise RequestLogError(f"{p} is not a request log: {e}") from e


SECOND_STAGE_FILE = "second_stage.json"  # in a registered text classifier's folder: plain numbers, nothing executable


class EmbeddingStageSpec(BaseModel):
    """A text classifier's embedding stage: ``sigmoid(coef[:-1] . embed(head_and_tail(text, max_chars)) +
    coef[-1] * logit(p) / logit_scale + intercept)``, ``p`` the n-gram model's probability (clipped to
    [1e-4, 1 - 1e-4]). ``embedding_model`` is a prepared default's name, pinned by the sha256 of its asset
    manifest; a version whose model differs is refused at load."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    embedding_model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    max_chars: int = Field(ge=50, le=100_000)
    logit_scale: float = Field(gt=0)
    dimension: int = Field(ge=1, le=65_536)
    coef: list[float]
    intercept: float
    train_from: float = Field(0.0, ge=0, lt=1)
    _weights: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fits(self) -> EmbeddingStageSpec:
        if len(self.coef) != self.dimension + 1:
            raise ValueError(f"{len(self.coef)} weights for {self.dimension} dimensions + the n-gram score")
        return self

    def score(self, vector: Any, p: float) -> float:
        """The stage's probability for a unit-length embedding ``vector`` and n-gram probability ``p``."""
        import math

        import numpy as np

        if self._weights is None:
            self._weights = np.asarray(self.coef[:-1], dtype=np.float32)
        q = min(max(float(p), 1e-4), 1 - 1e-4)
        z = float(np.asarray(vector, dtype=np.float32) @ self._weights)
        z += self.coef[-1] * math.log(q / (1 - q)) / self.logit_scale + self.intercept
        return 1 / (1 + math.exp(-min(max(z, -50.0), 50.0)))
