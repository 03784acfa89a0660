"""RAG fixtures: the real MiniLM embedder (loaded once) and a pipeline factory on real Qdrant local mode."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder(embedding_model_dir):
    from rag.embed import EmbeddingConfig, LocalEmbedder

    return LocalEmbedder(EmbeddingConfig(model=str(embedding_model_dir)))


@pytest.fixture
def make_pipeline(embedder, tmp_path, registry):
    from rag.pipeline import RAGConfig, RAGPipeline

    def make(**raw):
        raw.setdefault("store", {"path": ":memory:"})
        raw.setdefault("manifest_dir", str(tmp_path / "manifests"))
        raw.setdefault("generation", {"base_url": "http://127.0.0.1:9/v1"})  # nothing listens there
        return RAGPipeline(RAGConfig.model_validate(raw), embedder=embedder, registry=registry)

    return make
