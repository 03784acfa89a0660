"""LangChain integration: the index as a ``BaseRetriever``, so LangChain apps use it directly.

Example::

    retriever = RAGPipeline.from_config("configs/rag/default.yaml").as_retriever(top_k=4)
    docs = retriever.invoke("How do I rotate an API key?")   # list[langchain_core.documents.Document]
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict


class PipelineRetriever(BaseRetriever):
    """Documents from :meth:`rag.pipeline.RAGPipeline.retrieve`; metadata carries source, chunk id, score."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: Any
    tenant: str | None = None
    filters: dict[str, Any] | None = None
    top_k: int | None = None
    mode: str | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.pipeline.retrieve(query, filters=self.filters, tenant=self.tenant, top_k=self.top_k,
                                      mode=self.mode)
        return [Document(page_content=h.text, id=h.id, metadata={
            **{k: v for k, v in h.payload.items() if k != "text"}, "chunk_id": h.id, "score": h.score})
            for h in hits]
