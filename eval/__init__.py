"""LLM evaluation, reports and gated promotion (planned in issue #7)."""
