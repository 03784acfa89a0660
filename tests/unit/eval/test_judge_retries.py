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


@pytest.mark.parametrize("status, error, calls, requests", [
    (400, openai.BadRequestError, 1, 1),  # refused: one try, failed at once
    (503, openai.InternalServerError, 3, 6),  # transient: ragas' 3 attempts, each with the client's own retry
])
def test_a_refused_judge_request_fails_at_once_and_a_transient_fault_is_retried_a_bounded_number_of_times(
        status, error, calls, requests):
    from langchain_core.prompt_values import StringPromptValue

    from eval.metrics.judged import StructuredJudge

    with _Endpoint(status) as endpoint:
        judge = StructuredJudge(base_url=endpoint.url, model="m", max_tokens=8, timeout_s=30)
        with pytest.raises(error):
            asyncio.run(judge.generate(StringPromptValue(text="Score this.")))
    assert judge.calls == calls and endpoint.requests == requests
