"""The judge's retry policy: a request the endpoint refuses fails at once (counted as a failed judgement by
the caller), a transient fault is tried again a bounded number of times."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest


class _Endpoint:
    """A chat endpoint on loopback that answers every request with ``status`` (and counts them)."""

    def __init__(self, status: int) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.requests += 1
                body = json.dumps({"error": {"message": "refused", "type": "invalid_request_error"}}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> _Endpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _judge(url: str):
    from langchain_core.prompt_values import StringPromptValue

    from eval.metrics.judged import StructuredJudge

    judge = StructuredJudge(base_url=url, model="m", max_tokens=8, timeout_s=30)
    return judge, StringPromptValue(text="Score this.")


def test_a_refused_judge_request_is_not_retried():
    with _Endpoint(400) as endpoint:
        judge, prompt = _judge(endpoint.url)
        with pytest.raises(openai.BadRequestError):
            asyncio.run(judge.generate(prompt))
    assert judge.calls == 1 and endpoint.requests == 1


def test_a_transient_judge_fault_is_retried_a_bounded_number_of_times():
    with _Endpoint(503) as endpoint:
        judge, prompt = _judge(endpoint.url)
        with pytest.raises(openai.InternalServerError):
            asyncio.run(judge.generate(prompt))
    # ragas' attempts (3), each with the client's own single retry
    assert judge.calls == 3 and endpoint.requests == 6
