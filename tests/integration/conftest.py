"""Integration fixtures: a real vLLM OpenAI server (serving.engine.Engine), once per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def vllm_base(base_model_dir, tmp_path_factory) -> Iterator[str]:
    """A vLLM server on the prepared SmolLM2 base model; yields its base URL."""
    from serving.config import EngineConfig
    from serving.engine import Engine

    engine = Engine(EngineConfig(name="base", served_name="smollm2", port=0, kv_cache_gb=1, enable_lora=False),
                    str(base_model_dir), tmp_path_factory.mktemp("vllm"))
    engine.start()
    try:
        engine.wait_ready()
        yield engine.url
    finally:
        engine.stop()
