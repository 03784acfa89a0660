"""RAGPipeline: the public Python API of rag/ (ingest, retrieve, ask with citations; async variants).

Answers come from any OpenAI-compatible endpoint (our gateway by default), with numbered context
passages and an instruction to answer only from them and to say so when they do not hold the answer.
A question that retrieves nothing gets an explicit no-answer without calling the model. Example::

    from rag.pipeline import RAGPipeline
    rag = RAGPipeline.from_config("configs/rag/default.yaml")
    rag.ingest(["docs"])
    answer = rag.ask("Which port does the gateway listen on?")
    print(answer.text)
    for c in answer.citations:
        print(c.number, c.source, c.chunk_id, round(c.score, 3))
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.contracts import CONTEXT_PART_KEY, NO_ANSWER, GuardHook, RegistryAPI, VerdictRecord, context_messages
from llmops.errors import LLMOpsError
from rag.embed import Embedder, EmbeddingConfig, make_embedder
from rag.ingest import ChunkingConfig, IngestReport, ingest
from rag.retrieve import RetrievalConfig, TenantConfig, retrieve
from rag.store import Hit, Store, StoreConfig

log = logging.getLogger(__name__)

_CITE = re.compile(r"\[(\d{1,3})\]")


class GenerationError(LLMOpsError):
    """The answering endpoint failed or refused."""


class GenerationConfig(StrictModel):
    """The OpenAI-compatible endpoint that writes answers."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint (our gateway).")
    model: str = Field("smollm2", description="Model id at the endpoint (a base model or an adapter).")
    api_key: str | None = Field(None, description="Key for the endpoint (prefer api_key_env).")
    api_key_env: str = Field("LLMOPS_API_KEY", description="Environment variable with the endpoint's key.")
    max_tokens: int = Field(256, ge=1, description="Answer length limit.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy).")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI's frequency penalty; the shipped "
                                     "config sets 0.5, which cut the default model's repetition loops on RAG "
                                     "answers from 25% to 5% with no loss of token F1 (docs/eval.md).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_context_chars: int = Field(6000, ge=200, description="Context passages are cut to fit this budget.")
    mark_context: bool = Field(
        True, description="Send each retrieved passage as its own text part marked llmops_context, so the llmops "
        "gateway's guardrails judge passages as data and the question as the user's words (the prompt text is the "
        "same). false: one plain string, for endpoints other than the llmops gateway.")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="More request fields the endpoint understands, sent as they are (e.g. "
        "vLLM's structured_outputs to constrain the answer's form).")

    def key(self) -> str:
        return os.environ.get(self.api_key_env) or self.api_key or "none"


class GuardrailsHook(StrictModel):
    """Guardrails around ask(): input rails on the question, output rails (incl. groundedness) on the answer."""

    enabled: bool = Field(False, description="Run the guardrails policy in ask().")
    config: str | None = Field(None, description="Policy YAML (None: configs/guardrails/default.yaml).")


class RAGConfig(StrictModel):
    """A RAG application: where the index is, how it is built and queried, who answers."""

    store: StoreConfig = Field(default_factory=StoreConfig, description="The Qdrant collection.")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="Dense embedding model.")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig, description="Document splitting.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Search settings.")
    tenants: TenantConfig = Field(default_factory=TenantConfig, description="Multi-tenancy.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Answering endpoint.")
    guardrails: GuardrailsHook = Field(default_factory=GuardrailsHook, description="Guardrails in ask().")
    sources: list[str] = Field(default_factory=lambda: ["docs"], description="Default paths for ingest().")
    register_index: bool = Field(True, description="Register an index version in the registry after an ingest "
                                 "that changed the index.")
    registry_name: str | None = Field(None, description="Registered name of the index (default rag-<collection>).")
    manifest_dir: str = Field("data/rag", description="Where the index manifest JSON is written.")


@dataclass(frozen=True)
class Citation:
    number: int
    source: str
    chunk_id: str
    score: float
    text: str


@dataclass
class Answer:
    """An answer with the passages it cites and everything retrieved."""

    question: str
    text: str
    citations: list[Citation]
    contexts: list[Citation]
    no_answer: bool
    model: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    blocked: bool = False
    guardrails: list[VerdictRecord] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)


def planted_instructions(guard: GuardHook, text: str) -> bool:
    """The guard's injection rail finds instructions in ``text`` judged as a retrieved passage (data)."""
    v = guard.check_input([{"role": "user", "content": [{"type": "text", "text": text, CONTEXT_PART_KEY: True}]}])
    return any(f.label.startswith("context:") for f in v.findings)


def build_messages(question: str, hits: list[Hit], max_chars: int = 6000, marked: bool = False) -> list[dict]:
    """The chat messages for ``question`` over numbered ``hits`` (:func:`llmops.contracts.context_messages`)."""
    return context_messages(question, [h.text for h in hits], max_chars, marked=marked)


def parse_citations(text: str, contexts: list[Citation]) -> tuple[list[Citation], list[int]]:
    """``(cited contexts in order of first mention, numbers that point at no passage)``."""
    cited, invalid, seen = [], [], set()
    for m in _CITE.finditer(text):
        n = int(m.group(1))
        if n in seen:
            continue
        seen.add(n)
        if 1 <= n <= len(contexts):
            cited.append(contexts[n - 1])
        else:
            invalid.append(n)
    return cited, invalid


def is_no_answer(text: str) -> bool:
    t = text.strip().lower()
    return not t or t.startswith("i don't know") or t.startswith("i do not know")


class RAGPipeline:
    """Ingest documents into Qdrant, retrieve chunks and answer questions with citations."""

    def __init__(self, cfg: RAGConfig, *, embedder: Embedder | None = None,
                 registry: RegistryAPI | None = None) -> None:
        self.cfg = cfg
        self.store = Store(cfg.store)
        self._embedder = embedder
        self._registry = registry
        self._guard = None
        self._guard_lock = threading.Lock()
        self._client = None
        self._aclient = None

    @classmethod
    def from_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                    **kwargs: Any) -> RAGPipeline:
        """Build from ``configs/rag/*.yaml`` (None: the defaults) with dotted overrides.

        Raises:
            ConfigError: invalid config (every problem listed with its line).
        """
        from llmops.config import load_config

        return cls(load_config(path, RAGConfig, overrides or []), **kwargs)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = make_embedder(self.cfg.embedding)
        return self._embedder

    # ----------------------------------------------------------------- ingest
    def ingest(self, paths: list[str | Path] | None = None, *, tenant: str | None = None,
               delete_missing: bool = True, **kwargs: Any) -> IngestReport:
        """Index ``paths`` (default: ``sources`` from the config) incrementally; register an index version.

        Raises:
            IngestError: a path does not exist, or tenancy is on and no tenant was given.
        """
        from rag.ingest import IngestError

        if self.cfg.tenants.enabled and not tenant:
            raise IngestError("Tenancy is enabled (tenants.enabled): pass tenant=... to ingest.")
        guard = self._guardrails()
        if guard is not None and "flag" not in kwargs:
            kwargs["flag"] = lambda text: planted_instructions(guard, text)
        report = ingest(list(paths or self.cfg.sources), self.store, self.embedder, self.cfg.chunking,
                        tenant=tenant, delete_missing=delete_missing, **kwargs)
        if report.flagged:
            log.warning("ingest: %d chunks carry instructions to an assistant (flagged planted_instructions)",
                        len(report.flagged))
        manifest = self.write_manifest(report)
        if self.cfg.register_index:
            self._register(manifest, report)
        return report

    def manifest(self) -> dict[str, Any]:
        """What the collection holds: per (tenant, source) the file sha256 and chunk count."""
        files: dict[str, dict[str, Any]] = {}
        for pl in self.store.payloads(["source", "tenant", "file_sha256"]).values() if self.store.exists() else []:
            key = f"{pl.get('tenant') or ''}::{pl.get('source')}"
            entry = files.setdefault(key, {"tenant": pl.get("tenant"), "source": pl.get("source"),
                                           "file_sha256": pl.get("file_sha256"), "chunks": 0})
            entry["chunks"] += 1
        meta = self.store.metadata()
        return {"collection": self.store.collection, "embedding_model": meta.get("embedding_model"),
                "dim": meta.get("dim"), "chunks": sum(f["chunks"] for f in files.values()),
                "files": dict(sorted(files.items()))}

    def write_manifest(self, report: IngestReport) -> Path:
        out = Path(self.cfg.manifest_dir) / f"{self.store.collection}.manifest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=2, sort_keys=True))
        tmp.replace(out)
        (out.parent / f"{self.store.collection}.ingest_report.json").write_text(json.dumps({
            "indexed": report.indexed, "unchanged": report.unchanged, "deleted": report.deleted,
            "skipped": report.skipped, "failed": report.failed, "chunks_added": report.chunks_added,
            "chunks_removed": report.chunks_removed, "chunks_total": report.chunks_total,
            "seconds": round(report.seconds, 3)}, indent=2))
        return out

    def _register(self, manifest: Path, report: IngestReport) -> Any:
        from llmops.registry import Lineage, Registry

        registry = self._registry or Registry()
        name = self.cfg.registry_name or f"rag-{self.store.collection}"
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        existing = registry.versions(name) if name in registry.models() else []
        if existing and existing[-1].tags.get("rag.manifest_sha256") == digest:
            return existing[-1]  # nothing changed since the last registered version
        data = json.loads(manifest.read_text())
        version = registry.register(
            name, manifest, kind="rag_index",
            lineage=Lineage(dataset_sha256=digest, base_model=data["embedding_model"],
                            extra={"collection": self.store.collection}),
            tags={"rag.manifest_sha256": digest, "rag.collection": self.store.collection,
                  "rag.embedding_model": str(data["embedding_model"]), "rag.chunks": str(data["chunks"]),
                  "rag.store": self.cfg.store.url or str(Path(self.cfg.store.path).resolve())},
            aliases=["current"], metrics={"chunks": data["chunks"], "files": len(data["files"]),
                                         "chunks_added": report.chunks_added,
                                         "chunks_removed": report.chunks_removed},
            reason="rag ingest")
        log.info("registered index version %s (%d chunks)", version.ref, data["chunks"])
        return version

    # --------------------------------------------------------------- retrieve
    def retrieve(self, query: str, *, filters: dict[str, Any] | None = None, tenant: str | None = None,
                 top_k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The most relevant chunks (empty when nothing matches).

        Raises:
            RetrievalError: empty query or missing tenant. StoreError: another embedding model.
        """
        return retrieve(query, self.store, self.embedder, self.cfg.retrieval, filters=filters, tenant=tenant,
                        tenants=self.cfg.tenants, top_k=top_k, mode=mode)

    async def aretrieve(self, query: str, **kwargs: Any) -> list[Hit]:
        return await asyncio.to_thread(self.retrieve, query, **kwargs)

    # -------------------------------------------------------------------- ask
    def _guardrails(self) -> GuardHook | None:
        with self._guard_lock:  # aask runs _prepare in threads: load the guard once, not once per thread
            if self._guard is None and self.cfg.guardrails.enabled:
                from llmops.plugins import load_guard

                self._guard = load_guard(self.cfg.guardrails.config, self._registry)
        return self._guard

    def _prepare(self, question: str, filters: dict[str, Any] | None, tenant: str | None,
                 top_k: int | None) -> tuple[Answer | None, str, list[Citation], list[VerdictRecord]]:
        verdicts: list[VerdictRecord] = []
        guard = self._guardrails()
        if guard is not None:
            v = guard.check_input([{"role": "user", "content": question}])
            verdicts.append(VerdictRecord.of("input", v))
            if not v.allowed:
                refused = Answer(question, v.text or NO_ANSWER, [], [], True, blocked=True, guardrails=verdicts)
                return refused, question, [], verdicts
            if v.action == "redact":  # retrieval and the model see the redacted question only
                redacted = v.messages
                question = (redacted[-1]["content"] if redacted else v.text) or question
        hits = self.retrieve(question, filters=filters, tenant=tenant, top_k=top_k)
        flagged = [h for h in hits if (h.payload or {}).get("planted_instructions")]
        if flagged:  # chunks flagged at ingest never reach a prompt, whichever endpoint answers
            log.warning("left %d retrieved chunks with planted instructions out of the prompt: %s", len(flagged),
                        ", ".join(f"{h.source}#{(h.payload or {}).get('chunk_index')}" for h in flagged))
            hits = [h for h in hits if h not in flagged]
        contexts = [Citation(i, h.source, h.id, h.score, h.text) for i, h in enumerate(hits, 1)]
        if not hits:
            return Answer(question, NO_ANSWER, [], [], True, guardrails=verdicts), question, contexts, verdicts
        return None, question, contexts, verdicts

    def _finish(self, question: str, text: str, contexts: list[Citation], verdicts: list[VerdictRecord],
                model: str | None, usage: dict[str, int], t0: float) -> Answer:
        guard = self._guardrails()
        if guard is not None:
            v = guard.check_output(text, context=[c.text for c in contexts])
            verdicts.append(VerdictRecord.of("output", v))
            if not v.allowed:
                return Answer(question, v.text or NO_ANSWER, [], contexts, True, model, usage,
                              (time.perf_counter() - t0) * 1000, blocked=True, guardrails=verdicts)
            text = v.text
        cited, invalid = parse_citations(text, contexts)
        return Answer(question, text.strip(), cited, contexts, is_no_answer(text), model, usage,
                      (time.perf_counter() - t0) * 1000, guardrails=verdicts, invalid_citations=invalid)

    def _generation_error(self, e: Exception) -> GenerationError:
        g = self.cfg.generation
        return GenerationError(f"The answering endpoint {g.base_url} (model {g.model!r}) failed: {e}. Check that "
                               "it runs (make serve) and that generation.base_url and generation.model name it.")

    def _request(self, question: str, contexts: list[Citation]) -> dict[str, Any]:
        g = self.cfg.generation
        hits = [Hit(c.chunk_id, c.score, c.text, {"source": c.source}) for c in contexts]
        request = {"model": g.model, "messages": build_messages(question, hits, g.max_context_chars, g.mark_context),
                   "max_tokens": g.max_tokens, "temperature": g.temperature}
        if g.frequency_penalty:
            request["frequency_penalty"] = g.frequency_penalty
        if g.extra_body:
            request["extra_body"] = dict(g.extra_body)
        return request

    def ask(self, question: str, *, filters: dict[str, Any] | None = None, tenant: str | None = None,
            top_k: int | None = None) -> Answer:
        """Retrieve, then answer from the retrieved chunks with numbered citations.

        Raises:
            RetrievalError: empty question or missing tenant. GenerationError: the endpoint failed.
        """
        t0 = time.perf_counter()
        early, question, contexts, verdicts = self._prepare(question, filters, tenant, top_k)
        if early is not None:
            early.latency_ms = (time.perf_counter() - t0) * 1000
            return early
        if self._client is None:
            from openai import OpenAI

            g = self.cfg.generation
            self._client = OpenAI(base_url=g.base_url, api_key=g.key(), timeout=g.timeout_s, max_retries=1)
        try:
            res = self._client.chat.completions.create(**self._request(question, contexts))
        except Exception as e:  # noqa: BLE001 - openai raises many types; say which endpoint failed
            raise self._generation_error(e) from e
        usage = res.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) if res.usage else {}
        return self._finish(question, res.choices[0].message.content or "", contexts, verdicts, res.model,
                            usage, t0)

    async def aask(self, question: str, *, filters: dict[str, Any] | None = None, tenant: str | None = None,
                   top_k: int | None = None) -> Answer:
        """The async variant of :meth:`ask` (retrieval in a thread, the request on AsyncOpenAI)."""
        t0 = time.perf_counter()
        early, question, contexts, verdicts = await asyncio.to_thread(self._prepare, question, filters, tenant,
                                                                      top_k)
        if early is not None:
            early.latency_ms = (time.perf_counter() - t0) * 1000
            return early
        if self._aclient is None:
            from openai import AsyncOpenAI

            g = self.cfg.generation
            self._aclient = AsyncOpenAI(base_url=g.base_url, api_key=g.key(), timeout=g.timeout_s, max_retries=1)
        try:
            res = await self._aclient.chat.completions.create(**self._request(question, contexts))
        except Exception as e:  # noqa: BLE001 - openai raises many types; say which endpoint failed
            raise self._generation_error(e) from e
        usage = res.usage.model_dump(include={"prompt_tokens", "completion_tokens"}) if res.usage else {}
        return self._finish(question, res.choices[0].message.content or "", contexts, verdicts, res.model,
                            usage, t0)

    def as_retriever(self, **kwargs: Any) -> Any:
        """A LangChain ``BaseRetriever`` over this index (kwargs: tenant, filters, top_k, mode)."""
        from rag.langchain import PipelineRetriever

        return PipelineRetriever(pipeline=self, **kwargs)
