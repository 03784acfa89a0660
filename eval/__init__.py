"""LLM evaluation: datasets, targets, metrics (deterministic, retrieval, ragas-judged), reports, gate."""
