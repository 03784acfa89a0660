"""Evaluation metrics: deterministic (text, citations, safety, speed), retrieval, and judged (ragas)."""
