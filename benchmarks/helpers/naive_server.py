"""The naive baseline for benchmarks/serving.py: transformers ``generate`` per request.

One request at a time (a lock around ``generate``), tokens streamed as OpenAI SSE so that
``vllm bench serve`` measures it like the real servers::

    python benchmarks/helpers/naive_server.py --model models/smollm2-135m-instruct --port 8200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build_app(model_dir: str, name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    lock = threading.Lock()
    app = FastAPI()

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
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new,
                  "do_sample": False, "streamer": streamer}
        if body.get("ignore_eos"):
            kwargs["min_new_tokens"] = max_new

        def run():
            with lock, torch.inference_mode():
                model.generate(**kwargs)

        threading.Thread(target=run, daemon=True).start()
        rid = f"cmpl-{uuid.uuid4().hex}"

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
    a = p.parse_args()
    uvicorn.run(build_app(a.model, a.name), host="127.0.0.1", port=a.port, log_level="warning")
