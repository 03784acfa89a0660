"""What an evaluation asks: an OpenAI-compatible endpoint, the RAG pipeline over it, or a registry
version that the eval serves itself (vLLM + gateway, `llmops serve` in a subprocess) for the run.

Requests are concurrent with a bound, retried, and time-limited per sample; failures are recorded
per sample, never raised. Example::

    with serve_registry_version("smollm2-qa@challenger", "configs/serving/default.yaml", out) as ep:
        samples = asyncio.run(ask_all(ep, rows, EndpointSettings()))
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from eval.datasets import EvalRow
from llmops.config import StrictModel
from llmops.contracts import RegistryAPI
from llmops.errors import LLMOpsError
from llmops.process import NotReadyError, wait_ready

log = logging.getLogger(__name__)


class TargetError(LLMOpsError):
    """The evaluated target cannot be started or reached."""


class TargetConfig(StrictModel):
    """The model under evaluation."""

    model: str | None = Field(None, description="Registry reference (name@alias, name/version); the eval serves "
                              "it for the run. None: use base_url as it is.")
    base_url: str | None = Field(None, description="A running OpenAI-compatible endpoint (with model_name).")
    model_name: str | None = Field(None, description="Model id at base_url.")
    registry_ref: str | None = Field(None, description="With base_url: the registry version that endpoint serves "
                                     "(name@alias), so the run is logged against it and gated.")
    api_key_env: str = Field("LLMOPS_API_KEY", description="Environment variable with the endpoint's key.")
    serving_config: str = Field("configs/serving/default.yaml",
                                description="Template for serving a registry version (engine, guardrails).")
    startup_timeout_s: float = Field(900, gt=0, description="Wait this long for the served version to be ready.")
    mark_context: bool = Field(
        True, description="Send given and retrieved passages as text parts marked llmops_context (the llmops "
        "gateway judges them as data, not as the user's words). false: plain strings, for other endpoints.")


class EndpointSettings(StrictModel):
    """How samples are requested."""

    concurrency: int = Field(8, ge=1, description="Requests in flight.")
    timeout_s: float = Field(120, gt=0, description="Per-sample timeout.")
    retries: int = Field(1, ge=0, description="Retries of a failed request (connection errors, 5xx, 429).")
    max_tokens: int = Field(128, ge=1, description="Answer length limit.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI's frequency penalty, for qa and rag "
                                     "suites alike (the shipped configs: 0.5, as the RAG pipeline's).")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="More request fields sent as they are, "
                                       "to qa and rag suites alike (e.g. vLLM's repetition_penalty).")


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str
    registry_ref: str | None = None  # name/version when the eval serves a registry version
    mark_context: bool = True  # passages as marked text parts (see TargetConfig.mark_context)


@dataclass
class Sample:
    """One answered (or failed) row."""

    row: EvalRow
    output: str = ""
    contexts: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    completion_tokens: int = 0
    error: str | None = None  # transport / server / timeout failure
    error_code: str | None = None  # e.g. content_blocked (a guardrail refusal is an outcome, not an error)
    citations: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length" when max_tokens stopped the answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_registry_version(ref: str, serving_config: str | Path, out_dir: Path, registry: RegistryAPI | None = None,
                           startup_timeout_s: float = 900) -> Iterator[Endpoint]:
    """Serve a registry version behind a private gateway for the duration of the block.

    A base model is served as the engine's model; an adapter is served on the template's base with
    LoRA, following the given alias. The gateway runs in a subprocess (`python -m serving`) with a
    one-off API key, so nothing outside this block can use it.

    Raises:
        TargetError: unknown reference or the server did not become ready (its log is named).
    """

    from llmops.config import read_yaml
    from llmops.registry import Registry, parse_ref

    registry = registry or Registry()
    version = registry.resolve(ref)
    raw, _ = read_yaml(serving_config)
    cfg = copy.deepcopy(raw)
    port = _free_port()
    key = "sk-eval-" + secrets.token_hex(12)
    import hashlib

    cfg.update(port=port, host="127.0.0.1", rollout_poll_s=0)
    # only this key: no key file shared with other servers, no keys from the environment
    cfg["auth"] = {"enabled": True, "keys_file": str(out_dir / "no-keys.json"), "keys_env": "LLMOPS_EVAL_NO_KEYS",
                   "keys": [{"id": kid, "sha256": hashlib.sha256(k.encode()).hexdigest(), "rpm": 100000,
                             "tpm": 100000000} for kid, k in (("eval", key),)]}
    cfg["request_log"] = {"enabled": True, "path": str(out_dir / "requests.sqlite")}
    engine = cfg["engines"][0]
    engine["port"] = 0
    cfg["engines"] = [engine]
    name, alias, _ = parse_ref(ref)
    if version.kind == "adapter":
        cfg["adapters"] = [{"registry_name": name, "alias": alias or "champion", "served_name": name}]
        if alias is None:
            raise TargetError(f"Serve an adapter by alias ({name}@challenger), not by version ({ref}).")
        model = name
    else:
        engine["model"] = str(version.local_path)
        cfg["adapters"] = []
        model = engine.get("served_name") or name
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "serving.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = out_dir / "serve.log"
    # the server must read the same registry as this process (a team server or a local SQLite store)
    env = dict(os.environ, LLMOPS_PID_FILE=str(out_dir / "serve.pid"), PYTHONUNBUFFERED="1",
               MLFLOW_TRACKING_URI=registry.tracking_uri)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--config", str(cfg_path)], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    log.info("serving %s (%s) for the eval on %s; log %s", ref, version.ref, base, log_path)
    try:
        try:
            wait_ready(proc, f"{base}/ready", startup_timeout_s, log_path)
        except NotReadyError as e:
            raise TargetError(f"Serving {ref} for the eval failed: {e}") from e
        yield Endpoint(f"{base}/v1", model, key, registry_ref=version.ref)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def messages_for(row: EvalRow, marked: bool = False) -> list[dict]:
    """The chat messages for a row: numbered given contexts in the RAG prompt format, else the question.
    ``marked``: passages as marked text parts, as RAGPipeline sends them, so the gateway's rails judge the
    question as the user's words and the passages as data (the engine sees the same prompt text)."""
    if row.contexts:
        from llmops.contracts import context_messages

        return context_messages(row.question, row.contexts, max_chars=20000, marked=marked)
    return [{"role": "user", "content": row.question}]


async def _bounded(rows: list[EvalRow], s: EndpointSettings, desc: str, fill: Any) -> list[Sample]:
    """Run ``await fill(row, sample)`` for every row with bounded concurrency, a per-sample timeout and a
    progress bar; a timeout or any other failure is recorded in the sample, never raised."""
    from tqdm.auto import tqdm

    sem = asyncio.Semaphore(s.concurrency)
    bar = tqdm(total=len(rows), desc=desc, unit="sample")

    async def one(row: EvalRow) -> Sample:
        sample = Sample(row)
        async with sem:
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(fill(row, sample), s.timeout_s * (s.retries + 1))
                if sample.error is None:
                    sample.latency_ms = (time.perf_counter() - t0) * 1000
            except TimeoutError:
                sample.error = f"timeout after {s.timeout_s:.0f} s"
            except Exception as e:  # noqa: BLE001 - any transport failure is a failed sample
                sample.error = f"{type(e).__name__}: {str(e)[:200]}"
        bar.update(1)
        return sample

    try:
        return list(await asyncio.gather(*(one(r) for r in rows)))
    finally:
        bar.close()


async def ask_all(ep: Endpoint, rows: list[EvalRow], s: EndpointSettings, desc: str = "eval") -> list[Sample]:
    """Ask every row concurrently (bounded); failures are recorded in the sample."""
    import openai

    client = openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=s.retries,
                                timeout=s.timeout_s)

    async def fill(row: EvalRow, sample: Sample) -> None:
        try:
            res = await client.chat.completions.create(model=ep.model, messages=messages_for(row, ep.mark_context),
                                                       max_tokens=s.max_tokens, temperature=s.temperature,
                                                       frequency_penalty=s.frequency_penalty or openai.NOT_GIVEN,
                                                       extra_body=s.extra_body or None)
        except openai.APIStatusError as e:
            code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
            if code != "content_blocked":  # a guardrail block is an outcome, not an error
                sample.error = f"HTTP {e.status_code}: {str(e)[:200]}"
            sample.error_code = code
            return
        sample.output = res.choices[0].message.content or ""
        sample.finish_reason = res.choices[0].finish_reason
        sample.completion_tokens = res.usage.completion_tokens if res.usage else 0

    try:
        return await _bounded(rows, s, desc, fill)
    finally:
        await client.close()


async def ask_rag(ep: Endpoint, rows: list[EvalRow], s: EndpointSettings, rag_config: str | None,
                  ingest: list[str], desc: str = "rag") -> list[Sample]:
    """Ask through RAGPipeline (retrieval + answer) on the endpoint; contexts are the retrieved chunks."""
    from rag.pipeline import GenerationError, RAGPipeline

    os.environ["LLMOPS_EVAL_KEY"] = ep.api_key
    overrides = [f"generation.base_url={ep.base_url}", f"generation.model={ep.model}",
                 f"generation.max_tokens={s.max_tokens}", f"generation.timeout_s={s.timeout_s}",
                 f"generation.frequency_penalty={s.frequency_penalty}",
                 "generation.api_key_env=LLMOPS_EVAL_KEY", f"generation.mark_context={str(ep.mark_context).lower()}",
                 # the gateway guards the requests (passages marked as data); no second check here
                 "guardrails.enabled=false"]
    if s.extra_body:
        overrides.append(f"generation.extra_body={json.dumps(s.extra_body)}")
    pipe = RAGPipeline.from_config(rag_config, overrides)
    if ingest:
        pipe.ingest(ingest)

    async def fill(row: EvalRow, sample: Sample) -> None:
        try:
            ans = await pipe.aask(row.question)
        except GenerationError as e:
            if "content_blocked" in str(e):
                sample.error_code = "content_blocked"
            else:
                sample.error = str(e)[:300]
            return
        if ans.blocked:  # the pipeline's own rails refused it (when a config turns them on)
            sample.error_code = "content_blocked"
            return
        sample.output = ans.text
        sample.contexts = [c.text for c in ans.contexts]
        sample.citations = [c.number for c in ans.citations]
        sample.completion_tokens = ans.usage.get("completion_tokens", 0)

    return await _bounded(rows, s, desc, fill)
