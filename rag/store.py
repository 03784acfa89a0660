"""The Qdrant store: the only module that imports qdrant_client.

One collection per index: a named dense vector (``dense``, cosine) and a BM25-style sparse vector
(``bm25``) whose IDF Qdrant computes (``Modifier.IDF``). Embedded local mode by default (a folder, or
``:memory:``); a Qdrant server or cluster by ``url`` + ``api_key`` on the same code path. The
collection's metadata records the embedding model and dimension, so a query with another model is
refused. Example::

    store = Store(StoreConfig(path=":memory:"), "docs")
    store.ensure_collection(dim=384, embedding_model="all-MiniLM-L6-v2")
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from llmops.config import StrictModel
from llmops.errors import LLMOpsError

log = logging.getLogger(__name__)

DENSE, SPARSE = "dense", "bm25"
PAYLOAD_INDEXES = {"source": "keyword", "tenant": "keyword", "file_sha256": "keyword", "tags": "keyword"}
_LOCAL_CLIENTS: dict[str, Any] = {}  # one client per local folder: Qdrant local mode locks its folder
_LOCK = threading.Lock()
# in-process mirrors of embedded collections: client -> {collection: index}, kept in step with writes
_INDEXES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_INDEX_LOCK = threading.Lock()


class StoreError(LLMOpsError):
    """The vector store cannot be used as configured."""


class StoreConfig(StrictModel):
    """Where the Qdrant collection lives."""

    path: str = Field("data/rag/qdrant", description="Embedded local mode folder, or :memory:. Ignored with url.")
    url: str | None = Field(None, description="Qdrant server / cluster URL (http://host:6333); None: local mode.")
    api_key: str | None = Field(None, description="API key for the server (or env QDRANT_API_KEY).")
    collection: str = Field("docs", description="Collection name.")
    batch_size: int = Field(128, ge=1, description="Points per upsert.")
    timeout_s: int = Field(30, ge=1, description="Server request timeout.")
    local_index: bool = Field(
        True, description="Embedded mode: answer queries from an in-process numpy/scipy mirror of the collection "
        "(rag/index.py; same results, Qdrant's local mode scans in Python). False: Qdrant's local query API.")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    id: str
    score: float
    text: str
    payload: dict[str, Any]

    @property
    def source(self) -> str:
        return str(self.payload.get("source", ""))


def close_local_clients() -> None:
    """Close embedded-mode clients (releases the folder lock; runs at exit so Qdrant's own
    finaliser does not fail during interpreter shutdown)."""
    with _LOCK:
        for client in _LOCAL_CLIENTS.values():
            client.close()
        _LOCAL_CLIENTS.clear()


atexit.register(close_local_clients)


def _client(cfg: StoreConfig) -> Any:
    import os

    from qdrant_client import QdrantClient

    if cfg.url:
        return QdrantClient(url=cfg.url, api_key=cfg.api_key or os.environ.get("QDRANT_API_KEY"),
                            timeout=cfg.timeout_s)
    if cfg.path == ":memory:":
        return QdrantClient(location=":memory:")
    key = str(Path(cfg.path).resolve())
    with _LOCK:
        if key not in _LOCAL_CLIENTS:
            Path(key).mkdir(parents=True, exist_ok=True)
            try:
                _LOCAL_CLIENTS[key] = QdrantClient(path=key)
            except RuntimeError as e:  # another process holds the folder
                raise StoreError(f"Qdrant local folder {key} is in use by another process ({e}). Stop it, or "
                                 "run a Qdrant server and set store.url.") from e
        return _LOCAL_CLIENTS[key]


class Store:
    """A collection with dense + sparse vectors and payload indexes."""

    def __init__(self, cfg: StoreConfig, collection: str | None = None) -> None:
        self.cfg = cfg
        self.collection = collection or cfg.collection
        self.client = _client(cfg)

    def _changed(self, upserted: list[dict[str, Any]] | None = None, deleted: list[Any] | None = None) -> None:
        """Pass a write on to the in-process mirror; any other change (create, drop) discards it."""
        with _INDEX_LOCK:
            per_client = _INDEXES.get(self.client, {})
            index = per_client.get(self.collection)
            if index is None:
                return
            if upserted is not None:
                index.upsert([p["id"] for p in upserted], [p["dense"] for p in upserted],
                             [p["sparse"] for p in upserted],
                             [{k: v for k, v in p["payload"].items() if k != "text"} for p in upserted])
            elif deleted is not None:
                index.delete(deleted)
            else:
                per_client.pop(self.collection, None)

    def local_index(self) -> Any:
        """The in-process mirror used for embedded-mode queries (built from the collection on first use,
        then kept in step with this process's writes), or None with a server URL or ``local_index: false``."""
        if self.cfg.url or not self.cfg.local_index:
            return None
        with _INDEX_LOCK:
            per_client = _INDEXES.setdefault(self.client, {})
            if self.collection not in per_client:
                per_client[self.collection] = self._build_index()
            return per_client[self.collection]

    def _build_index(self) -> Any:
        from qdrant_client import models as m

        from rag.index import VectorIndex

        ids, dense, sparse, payloads = [], [], [], []
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection, limit=2048, offset=offset, with_vectors=True,
                with_payload=m.PayloadSelectorExclude(exclude=["text"]))
            for p in points:
                vec = p.vector or {}
                sv = vec.get(SPARSE)
                ids.append(p.id)
                dense.append(vec[DENSE])
                sparse.append((list(sv.indices), list(sv.values)) if sv is not None else ([], []))
                payloads.append(dict(p.payload or {}))
            if offset is None:
                break
        log.debug("built the in-process index of %s: %d points", self.collection, len(ids))
        return VectorIndex.build(ids, dense, sparse, payloads)

    # ------------------------------------------------------------ collection
    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def metadata(self) -> dict[str, Any]:
        """The collection's metadata (embedding model, dimension), {} when it does not exist."""
        if not self.exists():
            return {}
        return dict(self.client.get_collection(self.collection).config.metadata or {})

    def ensure_collection(self, dim: int, embedding_model: str) -> None:
        """Create the collection for ``embedding_model`` vectors, or check that it was made for them.

        Raises:
            StoreError: the collection exists for another embedding model or dimension.
        """
        from qdrant_client import models as m

        if self.exists():
            self.check_embedding(dim, embedding_model)
            return
        self.client.create_collection(
            self.collection,
            vectors_config={DENSE: m.VectorParams(size=dim, distance=m.Distance.COSINE)},
            sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            metadata={"embedding_model": embedding_model, "dim": dim},
        )
        self._changed()
        if self.cfg.url:  # payload indexes: server only (local mode filters without them)
            kinds = {"keyword": m.PayloadSchemaType.KEYWORD}
            for name, kind in PAYLOAD_INDEXES.items():
                self.client.create_payload_index(self.collection, name, kinds[kind])
        log.info("created collection %s (%s, dim %d)", self.collection, embedding_model, dim)

    def check_embedding(self, dim: int, embedding_model: str) -> None:
        """Raise when the collection was built with another embedding model or dimension."""
        meta = self.metadata()
        if meta and (meta.get("embedding_model") != embedding_model or int(meta.get("dim", dim)) != dim):
            raise StoreError(
                f"Collection {self.collection!r} was built with embedding model {meta.get('embedding_model')!r} "
                f"(dim {meta.get('dim')}), not {embedding_model!r} (dim {dim}). Query it with the same model, "
                "or ingest into another collection (store.collection)."
            )

    def drop(self) -> None:
        if self.exists():
            self.client.delete_collection(self.collection)
        self._changed()

    # ---------------------------------------------------------------- writes
    def upsert(self, points: list[dict[str, Any]]) -> None:
        """Upsert ``{"id", "dense", "sparse": (indices, values), "payload"}`` dicts in batches."""
        from qdrant_client import models as m

        for i in range(0, len(points), self.cfg.batch_size):
            batch = [
                m.PointStruct(id=p["id"], payload=p["payload"], vector={
                    DENSE: p["dense"], SPARSE: m.SparseVector(indices=p["sparse"][0], values=p["sparse"][1])})
                for p in points[i:i + self.cfg.batch_size]
            ]
            self.client.upsert(self.collection, points=batch, wait=True)
            self._changed(upserted=points[i:i + self.cfg.batch_size])

    def delete_ids(self, ids: list[str]) -> None:
        from qdrant_client import models as m

        for i in range(0, len(ids), 1000):
            self.client.delete(self.collection, points_selector=m.PointIdsList(points=ids[i:i + 1000]), wait=True)
            self._changed(deleted=ids[i:i + 1000])

    def payloads(self, fields: list[str]) -> dict[str, dict[str, Any]]:
        """``{point id: payload subset}`` for every point (scrolls; no vectors)."""
        out: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset,
                                                with_payload=fields, with_vectors=False)
            out.update({str(p.id): dict(p.payload or {}) for p in points})
            if offset is None:
                return out

    def count(self, filters: dict[str, Any] | None = None) -> int:
        if not self.exists():
            return 0
        return int(self.client.count(self.collection, count_filter=_filter(filters), exact=True).count)

    # ----------------------------------------------------------------- reads
    def query(self, *, dense: list[float] | None, sparse: tuple[list[int], list[float]] | None, mode: str,
              limit: int, filters: dict[str, Any] | None = None, candidates: int = 50,
              score_threshold: float | None = None) -> list[Hit]:
        """Dense, sparse or hybrid (reciprocal rank fusion in Qdrant) search with payload filters."""
        from qdrant_client import models as m

        index = self.local_index()
        if index is not None:
            found = index.search(dense=dense, sparse=sparse, mode=mode, limit=limit, filters=filters,
                                 candidates=candidates, score_threshold=score_threshold)
            if not found:
                return []
            full = {p.id: dict(p.payload or {}) for p in self.client.retrieve(
                self.collection, [pid for pid, _ in found], with_payload=True, with_vectors=False)}
            # a point deleted between the search and this read is left out, not returned empty
            return [Hit(str(pid), score, str(full[pid].get("text", "")), full[pid]) for pid, score in found
                    if pid in full]

        flt = _filter(filters)
        sv = m.SparseVector(indices=sparse[0], values=sparse[1]) if sparse else None
        if mode == "dense":
            res = self.client.query_points(self.collection, query=dense, using=DENSE, limit=limit,
                                           query_filter=flt, with_payload=True, score_threshold=score_threshold)
        elif mode == "sparse":
            if not sv or not sv.indices:
                return []
            res = self.client.query_points(self.collection, query=sv, using=SPARSE, limit=limit,
                                           query_filter=flt, with_payload=True, score_threshold=score_threshold)
        else:
            prefetch = [m.Prefetch(query=dense, using=DENSE, limit=candidates, filter=flt)]
            if sv and sv.indices:
                prefetch.append(m.Prefetch(query=sv, using=SPARSE, limit=candidates, filter=flt))
            res = self.client.query_points(self.collection, prefetch=prefetch,
                                           query=m.FusionQuery(fusion=m.Fusion.RRF), limit=limit,
                                           query_filter=flt, with_payload=True)
        return [Hit(str(p.id), float(p.score), str((p.payload or {}).get("text", "")), dict(p.payload or {}))
                for p in res.points]


def _filter(filters: dict[str, Any] | None) -> Any:
    """``{"tenant": "acme", "tags": ["a", "b"]}`` -> a Qdrant filter (lists match any value)."""
    if not filters:
        return None
    from qdrant_client import models as m

    must = []
    for key, value in filters.items():
        if isinstance(value, list | tuple | set):
            must.append(m.FieldCondition(key=key, match=m.MatchAny(any=list(value))))
        else:
            must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
    return m.Filter(must=must)
