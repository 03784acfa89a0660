"""RAG over Qdrant (planned in issue #5)."""
