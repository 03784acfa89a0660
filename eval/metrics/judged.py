"""Judged metrics through ragas: faithfulness, answer relevancy, context precision.

The judge is any OpenAI-compatible endpoint. ragas writes the JSON schema of the answer it expects
into each prompt; :class:`StructuredJudge` lifts that schema out and sends it as
``response_format={"type": "json_schema", ...}``, so a vLLM judge's answers always parse (vLLM
constrains decoding to the schema). Endpoints without structured output fall back to plain text.
A judgement that errors, times out or comes back NaN is counted as failed, never dropped::

    judge = StructuredJudge(base_url="http://127.0.0.1:8100/v1", model="smollm2")
    scores = await judge_sample(metrics, question, answer, contexts, reference)
"""

from __future__ import annotations

import json
import logging
import math
import re
import typing as t

from pydantic import Field

from llmops.config import StrictModel

log = logging.getLogger(__name__)

JUDGED = ("faithfulness", "answer_relevancy", "context_precision")
_SCHEMA = re.compile(r"as specified in JSON Schema:\n(.*?)Do not use single quotes", re.S)


class JudgeConfig(StrictModel):
    """The LLM judge (ragas metrics)."""

    enabled: bool = Field(False, description="Compute the judged metrics.")
    base_url: str | None = Field(None, description="OpenAI-compatible judge endpoint (None: the evaluated one).")
    model: str | None = Field(None, description="Judge model id (None: the evaluated model).")
    api_key_env: str = Field("LLMOPS_JUDGE_API_KEY", description="Environment variable with the judge's key.")
    metrics: list[t.Literal["faithfulness", "answer_relevancy", "context_precision"]] = Field(
        default_factory=lambda: list(JUDGED), description="Judged metrics to compute.")
    max_samples: int | None = Field(20, ge=1, description="Judge at most this many samples per suite.")
    structured_output: bool = Field(True, description="Send ragas' JSON schema as response_format.")
    max_tokens: int = Field(384, ge=16, description="Judge answer length limit.")
    timeout_s: float = Field(120, gt=0, description="Per-judgement timeout.")


def schema_of(prompt: str) -> dict[str, t.Any] | None:
    """The JSON schema ragas embeds in a prompt, or None."""
    m = _SCHEMA.search(prompt)
    if not m:
        return None
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError:
        return None


def _judge_class() -> type:
    from langchain_core.outputs import Generation, LLMResult
    from ragas.llms.base import BaseRagasLLM

    class StructuredJudge(BaseRagasLLM):
        """A ragas LLM on an OpenAI-compatible endpoint with JSON-schema constrained answers."""

        def __init__(self, base_url: str, model: str, api_key: str = "none", max_tokens: int = 384,
                     structured: bool = True, timeout_s: float = 120) -> None:
            super().__init__()
            import openai
            from openai import AsyncOpenAI, OpenAI
            from ragas.run_config import RunConfig

            self.model, self.max_tokens, self.structured = model, max_tokens, structured
            # ragas retries any exception 10 times, waiting up to 60 s between tries: a request the endpoint
            # refuses (a 400 for a fix-the-output prompt past the context) then holds the sample until its
            # timeout. Only transient faults are worth another try, and not many.
            self.set_run_config(RunConfig(timeout=int(timeout_s), max_retries=3, max_wait=4, exception_types=(
                openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)))
            self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=1)
            self.aclient = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=1)
            self.calls = 0

        def _request(self, prompt: t.Any, n: int, temperature: float | None, stop: list[str] | None) -> dict:
            text = prompt.to_string()
            body: dict[str, t.Any] = {"model": self.model, "messages": [{"role": "user", "content": text}],
                                      "n": n, "temperature": temperature or 0.0, "max_tokens": self.max_tokens}
            if stop:
                body["stop"] = stop
            schema = schema_of(text) if self.structured else None
            if schema:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "judgement", "schema": schema}}
            return body

        @staticmethod
        def _result(res: t.Any) -> LLMResult:
            return LLMResult(generations=[[Generation(text=c.message.content or "") for c in res.choices]])

        def generate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None):  # noqa: ANN001
            self.calls += 1
            return self._result(self.client.chat.completions.create(**self._request(prompt, n, temperature, stop)))

        async def agenerate_text(self, prompt, n=1, temperature=0.01, stop=None, callbacks=None):  # noqa: ANN001
            self.calls += 1
            return self._result(await self.aclient.chat.completions.create(
                **self._request(prompt, n, temperature, stop)))

        def is_finished(self, response: LLMResult) -> bool:
            return True

    return StructuredJudge


def _embeddings_class() -> type:
    from ragas.embeddings.base import BaseRagasEmbeddings

    class LocalEmbeddings(BaseRagasEmbeddings):
        """The prepared MiniLM (sentence-transformers) for answer relevancy's question similarity."""

        def __init__(self, model: str = "all-MiniLM-L6-v2") -> None:
            super().__init__()
            from sentence_transformers import SentenceTransformer

            from llmops.assets import resolve_model

            self.model = SentenceTransformer(resolve_model(model), device="cpu")

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.model.encode(texts, show_progress_bar=False).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embed_documents(texts)

        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

    return LocalEmbeddings


def StructuredJudge(**kwargs: t.Any) -> t.Any:  # noqa: N802 - a factory that reads like the class
    return _judge_class()(**kwargs)


def make_metrics(names: list[str], judge: t.Any, embedding_model: str = "all-MiniLM-L6-v2") -> dict[str, t.Any]:
    """ragas metric objects bound to ``judge``."""
    from ragas.metrics import Faithfulness, LLMContextPrecisionWithReference, ResponseRelevancy

    out: dict[str, t.Any] = {}
    for name in names:
        if name == "faithfulness":
            out[name] = Faithfulness(llm=judge)
        elif name == "answer_relevancy":
            out[name] = ResponseRelevancy(llm=judge, embeddings=_embeddings_class()(embedding_model), strictness=1)
        elif name == "context_precision":
            out[name] = LLMContextPrecisionWithReference(llm=judge)
    return out


async def judge_sample(metrics: dict[str, t.Any], question: str, answer: str, contexts: list[str],
                       reference: str | None, timeout_s: float = 120) -> dict[str, float | None]:
    """Scores per metric; None marks a failed judgement (error, timeout, NaN or a skipped metric)."""
    import asyncio

    from ragas.dataset_schema import SingleTurnSample

    sample = SingleTurnSample(user_input=question, response=answer or " ", retrieved_contexts=contexts or [" "],
                              reference=reference or None)
    scores: dict[str, float | None] = {}
    for name, metric in metrics.items():
        if name == "context_precision" and not reference:
            scores[name] = None
            continue
        try:
            value = await asyncio.wait_for(metric.single_turn_ascore(sample), timeout_s)
            scores[name] = float(value) if value is not None and not math.isnan(float(value)) else None
        except Exception as e:  # noqa: BLE001 - any judge failure is a failed judgement, counted
            log.debug("judgement %s failed: %s", name, e)
            scores[name] = None
    return scores
