"""Integration fixtures: one real vLLM OpenAI server (serving.engine.Engine) on SmolLM2 for the session.

Startup costs 30-60 s on this CPU, so every module that needs the base model shares it; LoRA is on
so fine-tuned adapters can be loaded at run time (``Engine.load_adapter``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def vllm_engine(base_model_dir, tmp_path_factory) -> Iterator[object]:
    """The running :class:`serving.engine.Engine` (served name ``smollm2``)."""
    from serving.config import EngineConfig
    from serving.engine import Engine

    # a bare vLLM, as a user would run one: the tests call it directly (require_key off)
    engine = Engine(EngineConfig(name="base", served_name="smollm2", port=0, kv_cache_gb=1, enable_lora=True,
                                 max_loras=2, max_lora_rank=16, require_key=False),
                    str(base_model_dir), tmp_path_factory.mktemp("vllm"))
    engine.start()
    try:
        engine.wait_ready()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def vllm_base(vllm_engine) -> str:
    """Base URL of the shared vLLM server."""
    return vllm_engine.url
