"""The transformers baselines for benchmarks/serving.py, streamed as OpenAI SSE so that
``vllm bench serve`` measures them like the real servers.

- ``--mode generate`` (naive): ``model.generate`` per request, one request at a time (a lock).
- ``--mode cb``: transformers' own continuous batching (``init_continuous_batching``, paged KV
  cache, requests join and leave the running batch), the strongest transformers-only server.

    python benchmarks/helpers/naive_server.py --model models/smollm2-135m-instruct --port 8200 [--mode cb]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build_app(model_dir: str, name: str, mode: str = "generate", kv_tokens: int = 32768):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    from llmops.hardware import resolve_dtype

    # the same dtype choice as the vLLM engine (dtype: auto), so the baseline is not handicapped
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, resolve_dtype("auto").dtype)).eval()
    lock = threading.Lock()
    manager = None

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if manager is not None:  # its generation thread would keep the process alive
            manager.stop(block=True, timeout=10)

    app = FastAPI(lifespan=lifespan)
    if mode == "cb":
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # a bounded paged KV cache: left to itself it sizes the cache from free RAM (18 GB here)
        page = 32
        cb = ContinuousBatchingConfig(page_size=page, num_blocks=kv_tokens // page, max_batch_tokens=512)
        gen = GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
        manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        manager.start()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    async def generate(request: Request, chat: bool):
        body = await request.json()
        if chat:
            messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                         " ".join(p.get("text", "") for p in m["content"])} for m in body["messages"]]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
        else:
            ids = tok(body["prompt"], return_tensors="pt")["input_ids"]
        max_new = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        rid = f"cmpl-{uuid.uuid4().hex}"
        if manager is not None:
            return StreamingResponse(cb_events(ids[0].tolist(), max_new, bool(body.get("ignore_eos")), rid, chat),
                                     media_type="text/event-stream")
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new,
                  "do_sample": False, "streamer": streamer}
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_new

        def run():
            with lock, torch.inference_mode():
                model.generate(**kwargs)

        threading.Thread(target=run, daemon=True).start()

        async def events():
            loop = asyncio.get_running_loop()
            it = iter(streamer)
            n = 0
            while True:
                piece = await loop.run_in_executor(None, next, it, None)
                if piece is None:
                    break
                n += 1
                choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                yield "data: " + json.dumps({"id": rid, "object": "chunk", "created": int(time.time()),
                                             "model": name, "choices": [choice]}) + "\n\n"
            usage = {"prompt_tokens": int(ids.shape[1]), "completion_tokens": max_new,
                     "total_tokens": int(ids.shape[1]) + max_new}
            yield "data: " + json.dumps({"id": rid, "object": "chunk", "model": name, "choices": [],
                                         "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def chunk(rid: str, piece: str, chat: bool) -> str:
        choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
        return "data: " + json.dumps({"id": rid, "object": "chunk", "created": int(time.time()), "model": name,
                                      "choices": [choice]}) + "\n\n"

    async def cb_events(prompt: list[int], max_new: int, ignore_eos: bool, rid: str, chat: bool):
        queue: asyncio.Queue = asyncio.Queue()
        manager.register_result_handler(rid, queue.put_nowait)  # before the request can produce anything
        if manager.add_request(prompt, request_id=rid, max_new_tokens=max_new, streaming=True,
                               eos_token_id=-1 if ignore_eos else None) is None:
            yield "data: " + json.dumps({"error": {"message": "the batching manager refused the request",
                                                   "type": "server_error"}}) + "\n\n"
            return
        text, n = "", 0
        try:
            while True:
                out = await queue.get()
                if out.error:
                    break
                n = len(out.generated_tokens)
                full = tok.decode(out.generated_tokens, skip_special_tokens=True)
                if len(full) > len(text):
                    yield chunk(rid, full[len(text):], chat)
                    text = full
                if out.is_finished():
                    break
        finally:
            manager.cancel_request(rid)  # a client that left stops its generation (no-op when finished)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
        yield "data: " + json.dumps({"id": rid, "object": "chunk", "model": name, "choices": [],
                                     "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, False)

    return app


if __name__ == "__main__":
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="smollm2")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--mode", choices=["generate", "cb"], default="generate")
    p.add_argument("--kv-tokens", type=int, default=32768, help="cb: tokens the paged KV cache holds")
    a = p.parse_args()
    uvicorn.run(build_app(a.model, a.name, a.mode, a.kv_tokens), host="127.0.0.1", port=a.port, log_level="warning")
