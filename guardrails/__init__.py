"""Guardrails: input and output rails for the gateway and RAG (see guardrails.guard.Guard)."""
