"""Embeddings for RAG: dense (sentence-transformers, or any OpenAI-compatible /v1/embeddings) and the
BM25-style sparse vectors whose IDF Qdrant applies.

Example::

    emb = make_embedder(EmbeddingConfig())            # the prepared MiniLM default, on this machine
    vectors = emb.embed(["a chunk of text"])
    indices, values = bm25_vector("a chunk of text")
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Protocol

from pydantic import Field, model_validator

from llmops.config import StrictModel
from llmops.errors import LLMOpsError

_WORD = re.compile(r"[0-9a-z]+(?:[._'-][0-9a-z]+)*")
# Short English stop list: these words carry no retrieval signal and make sparse vectors long.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was what when where "
    "which who why will with you your does do can".split()
)


class EmbeddingError(LLMOpsError):
    """The embedding model cannot be loaded or called."""


class EmbeddingConfig(StrictModel):
    """Which dense embedding model to use."""

    model: str = Field("all-MiniLM-L6-v2", description="Prepared default, local sentence-transformers folder, or "
                       "the model name at the OpenAI-compatible endpoint (with base_url).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (http://host:8000/v1); None: local.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the endpoint's key.")
    model_id: str | None = Field(None, description="Identity recorded in the collection (default: the model's "
                                 "name); set it when one model is reached under two names.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding call.")
    max_tokens: int = Field(256, ge=8, description="Chunk size limit of the model (MiniLM: 256 word pieces).")

    @model_validator(mode="after")
    def _check(self) -> EmbeddingConfig:
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("embedding.base_url must start with http:// or https://")
        return self


class Embedder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...


class LocalEmbedder:
    """sentence-transformers in this process (normalised vectors for cosine)."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        from pathlib import Path

        from sentence_transformers import SentenceTransformer

        from llmops.assets import resolve_model

        path = resolve_model(cfg.model)
        try:
            self.model = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as e:
            raise EmbeddingError(f"Cannot load embedding model {cfg.model!r} from {path}: {e}") from e
        self.model_id = cfg.model_id or Path(path).name
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.batch_size = cfg.batch_size
        self.tokenizer = self.model.tokenizer

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True)
        return vecs.tolist()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text))


class RemoteEmbedder:
    """Any OpenAI-compatible /v1/embeddings endpoint (our gateway serves MiniLM as ``minilm``)."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        import os

        from openai import OpenAI

        self.client = OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env, "none"), max_retries=2)
        self.model, self.batch_size = cfg.model, cfg.batch_size
        self.model_id = cfg.model_id or cfg.model
        try:
            self.dim = len(self.embed(["dimension probe"])[0])
        except Exception as e:  # noqa: BLE001 - openai raises many types; say where it failed
            raise EmbeddingError(f"Embedding endpoint {cfg.base_url} (model {cfg.model!r}) failed: {e}") from e

    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            res = self.client.embeddings.create(model=self.model, input=texts[i:i + self.batch_size])
            out.extend(d.embedding for d in sorted(res.data, key=lambda d: d.index))
        return out

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # the endpoint's tokenizer is not here: ~4 characters per token


def make_embedder(cfg: EmbeddingConfig) -> Embedder:
    return RemoteEmbedder(cfg) if cfg.base_url else LocalEmbedder(cfg)


# ------------------------------------------------------------------- sparse
def terms(text: str) -> list[str]:
    """Lower-cased word terms; keeps identifiers such as ``LLMOPS_API_KEYS``, ``v1.2`` or ``8100`` whole."""
    words = _WORD.findall(text.lower().replace("_", "-"))
    out = [w for w in words if w not in STOPWORDS]
    # also index the parts of compound identifiers (llmops-api-keys -> llmops, api, keys)
    out += [p for w in words if re.search(r"[._'-]", w) for p in re.split(r"[._'-]", w) if p not in STOPWORDS]
    return out


def term_index(term: str) -> int:
    """A stable 31-bit index for a term (crc32; collisions are rare and only merge two terms)."""
    return zlib.crc32(term.encode()) & 0x7FFFFFFF


def bm25_vector(text: str, k1: float = 1.2, b: float = 0.75, avg_len: float = 120.0,
                query: bool = False) -> tuple[list[int], list[float]]:
    """The BM25 term-frequency part of a document (or a query's terms with weight 1).

    Qdrant multiplies by IDF at query time (``Modifier.IDF``), which completes BM25.
    """
    counts = Counter(terms(text))
    if not counts:
        return [], []
    weights: dict[int, float] = {}
    if query:
        for t in counts:
            weights[term_index(t)] = 1.0
    else:
        n = sum(counts.values())
        for t, tf in counts.items():
            idx = term_index(t)
            weights[idx] = weights.get(idx, 0.0) + tf * (k1 + 1) / (tf + k1 * (1 - b + b * n / avg_len))
    indices = sorted(weights)
    return indices, [weights[i] for i in indices]
