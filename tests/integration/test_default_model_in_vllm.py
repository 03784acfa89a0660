"""`make assets` yields a model folder that vLLM serves, with coherent English replies."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def ask(client, question: str) -> str:
    reply = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": question}],
    )
    return reply.choices[0].message.content


def test_vllm_serves_the_prepared_base_model(vllm_base):
    from openai import OpenAI

    client = OpenAI(base_url=f"{vllm_base}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    # The 135M model, de-quantized from Q4_1, is small: ask plainly phrased questions.
    assert "Paris" in ask(client, "What is the capital of France? Answer in one sentence.")
    assert "4" in ask(client, "What is 2 plus 2? Answer in one sentence.")
    text = ask(client, "Write one sentence about dogs.")
    words = text.split()
    assert len(words) >= 5 and all(w.isascii() for w in words)
    assert "dog" in text.lower()
