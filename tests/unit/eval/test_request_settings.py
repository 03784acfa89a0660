"""What the eval and the RAG pipeline send: the shipped generation defaults reach the endpoint."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from eval.datasets import EvalRow
from eval.targets import Endpoint, EndpointSettings, ask_all
from llmops.config import load_config

SEEN: list[dict] = []


def _fake() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        SEEN.append(await request.json())
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "four four four"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    return app


def test_the_eval_sends_the_frequency_penalty_only_when_set(serve_on_loopback, repo_root):
    from eval.run import EvalConfig

    url = serve_on_loopback(_fake())
    ep = Endpoint(f"{url}/v1", "m", "k")
    rows = [EvalRow(id="1", question="What is 2+2?")]
    shipped = load_config(repo_root / "configs/eval/default.yaml", EvalConfig).requests
    assert shipped.frequency_penalty == 0.5
    SEEN.clear()
    samples = asyncio.run(ask_all(ep, rows, shipped))
    assert SEEN[-1]["frequency_penalty"] == 0.5 and samples[0].finish_reason == "length"
    asyncio.run(ask_all(ep, rows, EndpointSettings()))
    assert "frequency_penalty" not in SEEN[-1]  # left out, the endpoint's own default applies


def test_the_shipped_rag_config_asks_with_the_frequency_penalty(repo_root):
    from rag.pipeline import RAGConfig, RAGPipeline

    cfg = load_config(repo_root / "configs/rag/default.yaml", RAGConfig)
    request = RAGPipeline._request(type("P", (), {"cfg": cfg})(), "What is 2+2?", [])
    assert request["frequency_penalty"] == 0.5 and request["temperature"] == 0.0
    cfg.generation.frequency_penalty = 0.0
    assert "frequency_penalty" not in RAGPipeline._request(type("P", (), {"cfg": cfg})(), "q?", [])
