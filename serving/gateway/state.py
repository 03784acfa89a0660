"""Everything the gateway routes share: model table, tokenizers, keys, limits, log, metrics."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from llmops.contracts import content_text
from llmops.registry import UNAUDITED_ACTOR
from serving.config import ServingConfig
from serving.gateway.auth import KeyStore
from serving.gateway.errors import APIError
from serving.gateway.limits import make_limiter
from serving.gateway.metrics import EngineCollector, Metrics, RequestLogCollector
from serving.gateway.requestlog import RequestLog
from serving.gateway.usage import increments, make_usage
from serving.guard_hook import GuardHook, load_hook
from serving.router import Router

log = logging.getLogger(__name__)


# A prompt's prefix of this many characters per allowed token is tokenized first: prose runs at 3-5 characters
# per token, so a prompt far over the limit is refused on the prefix's count alone.
PREFIX_CHARS_PER_TOKEN = 8
# BPE and SentencePiece pre-tokenizers split before whitespace, so a prefix cut there has no more tokens than
# the whole text; the margin covers tokenizers whose pre-token may carry trailing newlines.
PREFIX_MARGIN_TOKENS = 4


_MAX_TOKEN_BYTES: dict[int, int] = {}


def max_token_bytes(tok) -> int:
    """The most UTF-8 bytes any token of the vocabulary spells (byte-level tokens are counted as their encoded
    symbols, which over-counts: the bound built on it stays a lower bound). Computed once per tokenizer."""
    key = id(tok)
    if key not in _MAX_TOKEN_BYTES:
        _MAX_TOKEN_BYTES[key] = max((len(t.encode("utf-8")) for t in tok.get_vocab()), default=1) or 1
    return _MAX_TOKEN_BYTES[key]


class LowerBound(int):
    """A token count that is a lower bound (the text was not tokenized whole): it is above the limit asked for."""


def bounded_count(tok, text: str, at_most: int | None, add_special_tokens: bool = True) -> int:
    """Tokens of ``text``; with ``at_most``, a text much longer than that many tokens may be answered with a
    lower bound above ``at_most`` instead, in this order of cost: its UTF-8 length over the longest token's
    (no tokenizing: a 2 MB run of one letter, base64 or text without spaces), then the count of a prefix cut
    before whitespace (:func:`text_prefix`). A bound comes back as :class:`LowerBound`; it is never above the
    count."""
    window = PREFIX_CHARS_PER_TOKEN * (at_most + 1) if at_most is not None else None
    if window is not None and len(text) > window:
        floor = len(text.encode("utf-8", "surrogatepass")) // max_token_bytes(tok)
        if floor > at_most + PREFIX_MARGIN_TOKENS:
            return LowerBound(floor)
        cut, usable = text_prefix(text, window)
        if usable:
            bound = len(tok.encode(cut, add_special_tokens=add_special_tokens))
            if bound > at_most + PREFIX_MARGIN_TOKENS:
                return LowerBound(bound)
    return len(tok.encode(text, add_special_tokens=add_special_tokens))


def text_prefix(text: str, chars: int) -> tuple[str, bool]:
    """At most ``chars`` characters of ``text``, cut just before a whitespace run that follows a word, and
    whether such a cut was found in the second half of that span (else the prefix is unusable as a bound)."""
    if len(text) <= chars:
        return text, True
    i = max(text.rfind(ws, chars // 2, chars + 1) for ws in " \n\t")
    while i > chars // 2 and text[i - 1].isspace():
        i -= 1
    if i <= chars // 2:
        return text[:chars], False
    return text[:i], True


@dataclass
class ModelRoute:
    public: str
    kind: Literal["base", "adapter", "embedding"]
    group: str  # base served name (engine group); "" for embeddings
    upstream: str  # the model name the engine knows
    max_model_len: int
    registry_version: str | None = None
    created: int = 0
    dtype: dict[str, str] | None = None  # {"dtype", "reason"} the engines resolved (base models)


class GatewayState:
    def __init__(self, cfg: ServingConfig, engines: list, model_paths: dict[str, str],
                 registry=None) -> None:
        """``engines``: started :class:`serving.engine.Engine` objects (or anything with url/state/cfg);
        ``model_paths``: base served name -> local model folder (for the tokenizer)."""
        self.cfg = cfg
        self.engines = engines
        self.keys = KeyStore(cfg.auth)
        self.metrics = Metrics()
        self.limiter = make_limiter(cfg.state, on_failure=self.metrics.state_errors.inc)
        self.usage = make_usage(cfg.state, self.limiter)
        self.metrics.registry.register(EngineCollector(engines))
        rl = cfg.request_log
        self.requestlog = (RequestLog(rl.path, rl.max_queue, rl.retention_days, rl.max_rows) if rl.enabled
                           else None)
        self.metrics.registry.register(RequestLogCollector(self))
        self.hook: GuardHook = load_hook(cfg.guardrails, registry)
        groups: dict[str, list] = {}
        for e in engines:
            groups.setdefault(e.cfg.served_name, []).append(e)
        self.router = Router(groups, cfg.router)
        self.inflight: dict[str, int] = {}  # engine group -> user requests sent and not finished (shadows yield)
        self.registry = registry
        self.models: dict[str, ModelRoute] = {}
        now = int(time.time())
        for e in engines:
            choice = getattr(e, "dtype", None)
            self.models.setdefault(e.cfg.served_name, ModelRoute(
                e.cfg.served_name, "base", e.cfg.served_name, e.cfg.served_name, e.cfg.max_model_len,
                created=now, dtype={"dtype": choice.dtype, "reason": choice.reason} if choice else None))
        self.tokenizers = {name: _load_tokenizer(path) for name, path in model_paths.items()}
        self.embedder = None
        if cfg.embeddings.enabled:
            from sentence_transformers import SentenceTransformer

            from llmops.assets import resolve_model

            path = resolve_model(cfg.embeddings.model, cfg.models_dir)
            self.embedder = SentenceTransformer(path, device="cpu")
            self.models[cfg.embeddings.served_name] = ModelRoute(
                cfg.embeddings.served_name, "embedding", "", path,
                int(self.embedder.max_seq_length), created=now)
        self._sync_lock = threading.Lock()
        self._unresolved: dict[tuple[str, str], str] = {}  # adapters whose alias is not set, and why
        self._background: set = set()  # tasks that outlive their request (Redis slot releases, usage)
        self._retiring: list[tuple[float, list, str]] = []  # (when, engines, internal name) of replaced versions
        self._embed_pool = None
        self._embed_pending = 0  # prompts waiting for their embedding (request_log.max_embedding_queue)
        self._embed_lock = threading.Lock()
        from serving.gateway.rollouts import Rollouts

        self.rollouts = Rollouts(self)

    # ------------------------------------------------------------------ models
    def route(self, model: Any, kinds: tuple[str, ...]) -> ModelRoute:
        """The route for a requested model id. Raises APIError 404/400."""
        if not isinstance(model, str) or not model:
            raise APIError(400, "'model' is required and must be a string.", param="model",
                           code="missing_model")
        r = self.models.get(model)
        if r is None or r.kind not in kinds:
            known = ", ".join(sorted(k for k, v in list(self.models.items()) if v.kind in kinds))
            raise APIError(404, f"The model '{model}' does not exist here. Available: {known}.",
                           "invalid_request_error", "model_not_found", "model")
        return r

    def sync_adapters(self) -> list[str]:
        """Point every configured adapter at the version its registry alias names now.

        A new version is loaded into each engine of its group under a versioned name, then the
        public name switches to it and the old one is unloaded: requests never see a gap.
        Returns the public names that changed.
        """
        if not self.cfg.adapters or self.registry is None:
            return []
        changed = []
        with self._sync_lock:
            self._retire_due()
            for a in self.cfg.adapters:
                group = a.base or self.cfg.engines[0].served_name
                try:
                    ref = f"{a.registry_name}@{a.alias}"
                    try:
                        self.registry.unaudited_move(a.registry_name, a.alias, detected_by="the gateway")
                    except Exception as e:  # noqa: BLE001 - a registry we may only read still gets followed
                        log.warning("could not check %s for moves outside llmops: %s", ref, e)
                    if self.cfg.unaudited_moves == "ignore":
                        last = self.registry.last_move(a.registry_name, a.alias)
                        if last is not None and last.actor == UNAUDITED_ACTOR:
                            # moved outside the project: serve the version of the last audited move
                            audited = self.registry.last_move(a.registry_name, a.alias, audited_only=True)
                            if audited is None or audited.to_version is None:
                                continue
                            ref = f"{a.registry_name}/{audited.to_version}"
                    version = self.registry.resolve(ref)
                except Exception as e:  # noqa: BLE001 - keep serving what runs; say why (once per reason)
                    key = (a.registry_name, a.alias)
                    if self._unresolved.get(key) != str(e):
                        self._unresolved[key] = str(e)
                        log.warning("adapter %s@%s not resolvable: %s", a.registry_name, a.alias, e)
                    continue
                self._unresolved.pop((a.registry_name, a.alias), None)
                current = self.models.get(a.public_name)
                if current is not None and current.registry_version == str(version.version):
                    continue
                route = self.load_version(a, group, version)
                if route is None:
                    continue
                self.models[a.public_name] = route
                internal = route.upstream
                engines = [e for e in self.engines if e.cfg.served_name == group]
                # served again (a rollback): no earlier retirement of it applies
                self._retiring = [r for r in self._retiring if r[2] != internal]
                # other gateways on these engines may still send to it for a moment; a first release's base arm
                # (the base model itself) is never unloaded
                if current is not None and current.upstream != group:
                    self._retiring.append((time.monotonic() + self.cfg.adapter_retire_s, engines, current.upstream))
                    self._retire_due()
                log.info("adapter %s now serves %s/%s", a.public_name, a.registry_name, version.version)
                changed.append(a.public_name)
        return changed

    def load_version(self, a, group: str, version, raise_errors: bool = False) -> ModelRoute | None:
        """Load registry ``version`` of adapter ``a`` into every engine of ``group`` under its versioned name; its
        route, or None when an engine refused it or did not answer (logged; what was loaded by this call is
        unloaded again). ``raise_errors``: raise that error after the clean-up instead of returning None."""
        internal = f"{a.public_name}--v{version.version}"
        engines = [e for e in self.engines if e.cfg.served_name == group]
        loaded_here = []  # engines where this call loaded it (not another gateway)
        try:
            for e in engines:
                if e.load_adapter(internal, str(version.local_path)) is not False:
                    loaded_here.append(e)
        except Exception as e:  # noqa: BLE001
            log.error("loading %s v%s failed, keeping what is served: %s", a.public_name, version.version, e)
            served = {m.upstream for m in self.models.values()} | self.rollouts.upstreams()
            for eng in engines:
                if eng in loaded_here and not self.cfg.shared_engines() and internal not in served:
                    eng.unload_adapter(internal)
                else:  # loaded by others, or on engines others use (they may serve it): left loaded,
                    getattr(eng, "adapters", {}).pop(internal, None)  # not passed again on a restart
            if raise_errors:
                raise
            return None
        base = self.models[group]
        return ModelRoute(a.public_name, "adapter", group, internal, base.max_model_len, str(version.version),
                          int(time.time()))

    def busy(self, group: str, per_replica: int) -> bool:
        """More than ``per_replica`` user requests per ready replica of ``group`` are in flight."""
        ready = sum(e.state == "ready" for e in self.router.groups.get(group, []))
        return self.inflight.get(group, 0) > per_replica * max(ready, 1)

    def retire(self, route: ModelRoute) -> None:
        """Unload ``route``'s adapter version after ``adapter_retire_s`` unless it is served again by then."""
        engines = [e for e in self.engines if e.cfg.served_name == route.group]
        self._retiring.append((time.monotonic() + self.cfg.adapter_retire_s, engines, route.upstream))
        self._retire_due()

    def _retire_due(self) -> None:
        """Unload the replaced adapter versions whose retirement time has come (none still served here)."""
        now = time.monotonic()
        served = {m.upstream for m in self.models.values()} | self.rollouts.upstreams()
        keep = []
        for when, engines, name in self._retiring:
            if when > now:
                keep.append((when, engines, name))
            elif name not in served:  # a rollback may have brought it back
                for e in engines:
                    e.unload_adapter(name)
        self._retiring = keep

    # ---------------------------------------------------------------- tokens
    def count_chat(self, group: str, messages: list[dict], at_most: int | None = None) -> int:
        """Prompt tokens of a conversation as the engine's chat template renders it.

        With ``at_most``, a conversation much longer than that may be answered with a lower bound above it
        instead of its count (see :func:`bounded_count`): refusing a 2 MB prompt then costs the rendering and
        the tokenization of a few thousand characters, not of the whole body.
        """
        tok = self.tokenizers.get(group)
        if tok is None:
            return sum(len(str(m.get("content") or "")) // 4 + 4 for m in messages)
        # text parts as the engine renders them (joined by newlines), not as a list's repr
        messages = [{**m, "content": "\n".join(p["text"] for p in m["content"] if isinstance(p, dict)
                                                and isinstance(p.get("text"), str))}
                    if isinstance(m.get("content"), list) else m for m in messages]
        try:  # the whole conversation rendered (templates may rewrite earlier turns), then counted
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates reject odd roles; estimate instead
            return sum(len(tok.encode(content_text(m.get("content")), add_special_tokens=False)) + 4
                       for m in messages)
        return bounded_count(tok, rendered, at_most, add_special_tokens=False)

    def decode(self, group: str, ids: list[int]) -> str:
        """The text of a token-id prompt (what the input rails judge).

        Raises:
            APIError: 400 when the ids are not the model's, or there is no tokenizer to read them with.
        """
        from serving.gateway.errors import APIError

        tok = self.tokenizers.get(group)
        if tok is None:
            raise APIError(400, "Token-id prompts cannot be checked by the guardrails without the model's "
                           "tokenizer; send the prompt as text.", code="invalid_prompt", param="prompt")
        if ids and max(ids) >= len(tok):
            raise APIError(400, f"Token id {max(ids)} is outside the model's vocabulary ({len(tok)} tokens).",
                           code="invalid_prompt", param="prompt")
        return tok.decode(ids, skip_special_tokens=False)

    def count_text(self, group: str, prompt: str, at_most: int | None = None) -> int:
        """Tokens of a completion prompt; with ``at_most``, a lower bound above it may come back instead (see
        :func:`bounded_count`)."""
        tok = self.tokenizers.get(group)
        if tok is None:
            return len(prompt) // 4 + 1
        return bounded_count(tok, prompt, at_most)

    def log_request(self, rec, prompt_text: str | None = None) -> None:
        """Write the record; with ``request_log.prompt_embeddings`` embed the prompt first, off the
        event loop (one background thread, so embedding never delays a response)."""
        if self.requestlog is None:
            return
        if rec.status == 401 and random.random() >= self.cfg.request_log.unauthenticated_sample:
            return  # a flood of bad keys must not fill the log (the metrics count every one)
        if not (prompt_text and self.cfg.request_log.prompt_embeddings and self.embedder is not None):
            self.requestlog.write(rec)
            return
        if self._embed_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._embed_pool = ThreadPoolExecutor(1, thread_name_prefix="prompt-embed")

        with self._embed_lock:  # a burst must not queue prompts without bound: past the cap, no embedding
            if self._embed_pending >= self.cfg.request_log.max_embedding_queue:
                self.requestlog.write(rec)
                return
            self._embed_pending += 1

        def embed_and_write() -> None:
            import numpy as np

            try:
                vec = self.embedder.encode([prompt_text[-4000:]], normalize_embeddings=True)[0]
                rec.prompt_embedding = np.asarray(vec, dtype=np.float32).tobytes()
            except Exception as e:  # noqa: BLE001 - the record is still written, without its embedding
                log.warning("prompt embedding failed: %s", e)
            finally:
                with self._embed_lock:
                    self._embed_pending -= 1
            self.requestlog.write(rec)

        self._embed_pool.submit(embed_and_write)

    async def release_slot(self, key: str, slot: str) -> None:
        """Give a concurrency slot back. In Redis this is a round trip the answer need not wait for: it runs as
        a task; in memory it is immediate."""
        if not self.limiter.shared:
            await self.limiter.release(key, slot)
            return
        self.spawn(self.limiter.release(key, slot))

    def record_usage(self, rec) -> None:
        """Add a finished request to its key's usage of the day (in Redis: in a task, off the answer's path)."""
        if rec.key_id is None:
            return
        inc = increments(rec.status, rec.prompt_tokens, rec.completion_tokens)
        if not self.usage.shared:
            self.usage.add(rec.key_id, rec.ts, inc)
            return
        self.spawn(self.usage.record(rec.key_id, rec.ts, inc))

    def spawn(self, coro) -> None:
        """Run ``coro`` as a task that outlives its request (kept referenced until done; awaited at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close(self) -> None:
        if self._embed_pool is not None:
            self._embed_pool.shutdown(wait=True)
        if self.requestlog:
            self.requestlog.close()


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
