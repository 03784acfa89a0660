"""RAG over Qdrant: incremental ingestion, hybrid retrieval, cited answers; RAGPipeline is the API."""
