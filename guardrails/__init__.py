"""Guardrails for prompts and answers (planned in issue #6)."""
