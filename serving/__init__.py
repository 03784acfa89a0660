"""vLLM engines behind the OpenAI-compatible gateway (planned in issue #4)."""
