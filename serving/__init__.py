"""vLLM engines behind the OpenAI-compatible gateway: ``llmops serve`` (serving.__main__)."""
