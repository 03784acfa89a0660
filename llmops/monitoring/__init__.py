"""The drift engine (tabular data, LLM request logs, eval scores) and its reports: ``llmops drift``."""
