"""Serving configuration (``configs/serving/*.yaml``): engines, adapters, gateway, auth, limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmops.config import StrictModel
from serving.rollout import RolloutConfig


class EngineConfig(StrictModel):
    """One vLLM OpenAI server process (a replica of a base model)."""

    name: str = Field("engine-0", description="Replica id (logs, metrics).")
    model: str = Field(
        "smollm2-135m-instruct",
        description="Base model: prepared default name, HF folder, registry ref or hub id (with `url`: the same "
        "model, prepared here, for the gateway's tokenizer).",
    )
    url: str | None = Field(
        None, description="An engine this gateway does not start (another gateway's, or one on another machine): "
        "requests and adapter loads go to this URL (http://host:port), its /health decides its state. None: the "
        "gateway starts and supervises the engine itself.")
    api_key_env: str | None = Field(
        None, description="Env var holding the engine's API key: one fixed key that every gateway in front of the "
        "engine shares (set it on the gateway that starts the engine and on those that reach it by `url`). None: "
        "a random key per start (require_key), known only to the gateway that started it.")
    served_name: str = Field("smollm2", description="Model id clients send for the base model.")
    host: str = Field("127.0.0.1", description="Interface the engine listens on.")
    port: int = Field(8100, ge=0, le=65535, description="Engine port (internal; 0 = pick a free one).")
    max_model_len: int = Field(2048, ge=128, description="Context length (prompt + completion).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and compute dtype. auto: bfloat16 on GPUs with bf16 and on CPUs with "
        "AVX512-BF16/AMX, float32 on other CPUs (emulated bf16 is ~5x slower there); the choice is logged and "
        "shown in /v1/models.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences batched together (continuous batching).")
    kv_cache_gb: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU (whole GiB).")
    cpu_threads_bind: str | None = Field(
        None, description="VLLM_CPU_OMP_THREADS_BIND: 'auto' (vLLM's default), 'nobind', or core ids like '0-1'; "
        "None: vLLM's default."
    )
    cpu_reserved_cores: int | Literal["auto"] | None = Field(
        "auto", description="VLLM_CPU_NUM_OF_RESERVED_CPU: cores kept out of the OpenMP pool for vLLM's front end "
        "and the gateway. auto: 0 on machines with up to 4 cores (measured on 2 cores: +22% output tok/s at "
        "concurrency 8, +40% at 32 through the gateway, benchmarks/results/cpu_layout.md), vLLM's default (one) on "
        "larger ones; None: vLLM's default.")
    cpu_openmp: Literal["gnu", "intel"] = Field(
        "gnu", description="OpenMP runtime of the engine on CPU: gnu (PyTorch's libgomp, which vLLM preloads) or "
        "intel (libiomp5 from the intel-openmp package, preloaded; vLLM then sets KMP_AFFINITY).")
    enable_lora: bool | Literal["auto"] = Field(
        "auto", description="Serve LoRA adapters (multi-LoRA). auto: on when `adapters` lists one for this "
        "engine's model, off otherwise (LoRA support costs the base model throughput).")
    max_loras: int = Field(4, ge=1, description="Adapters active in one batch.")
    max_lora_rank: int = Field(16, description="Largest adapter rank the engine accepts.")
    startup_timeout_s: float = Field(600, gt=0, description="Readiness wait before giving up.")
    restart_on_crash: bool = Field(True, description="Restart the process when it dies.")
    require_key: bool = Field(
        True, description="Start vLLM with a random API key per start, known only to the gateway, so nothing on "
        "this machine reaches the engine's /v1 routes (generation, LoRA loading) around the gateway. false: the "
        "engine's port is open, as a bare vLLM is (benchmarks that measure it directly).")
    compact_json: bool = Field(
        True, description="Structured outputs (response_format json_schema) without free whitespace (guidance "
        "backend): a small model otherwise can spend its whole token budget on whitespace inside the JSON.")
    aot_compile: bool | Literal["auto"] = Field(
        "auto", description="vLLM's AOT compile cache (VLLM_USE_AOT_COMPILE). auto: off with the CPU build, whose "
        "AOT cache does not load back (vllm-cpu 0.32.0 compiles again at every start: 118 s to ready on 2 cores; "
        "with the classic cache 56 s from the second start, same throughput; benchmarks/results/"
        "engine_startup.md); vLLM's default with the GPU build.")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM server arguments.")

    @field_validator("url")
    @classmethod
    def _engine_url(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.startswith(("http://", "https://")):
                raise ValueError("url must start with http:// or https://")
            v = v.rstrip("/")
        return v

    def aot_compile_setting(self) -> bool | None:
        """VLLM_USE_AOT_COMPILE for this engine: True / False, or None to leave vLLM's default."""
        from llmops.hardware import vllm_cpu_build

        if self.aot_compile == "auto":
            return False if vllm_cpu_build() else None
        return self.aot_compile

    @model_validator(mode="after")
    def _reserved(self) -> EngineConfig:
        if isinstance(self.cpu_reserved_cores, int) and self.cpu_reserved_cores < 0:
            raise ValueError("cpu_reserved_cores must be >= 0, auto or null")
        return self

    def reserved_cores(self, cores: int | None = None) -> int | None:
        """The VLLM_CPU_NUM_OF_RESERVED_CPU to set (None: leave vLLM's default) for a machine of ``cores``."""
        if self.cpu_reserved_cores != "auto":
            return self.cpu_reserved_cores
        import os

        cores = cores if cores is not None else len(os.sched_getaffinity(0))
        return 0 if cores <= 4 else None

    @model_validator(mode="after")
    def _rank(self) -> EngineConfig:
        allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
        if self.max_lora_rank not in allowed:
            raise ValueError(f"max_lora_rank must be one of {allowed} (what vLLM accepts)")
        return self


class AdapterConfig(StrictModel):
    """A LoRA adapter served by name, following a registry alias."""

    registry_name: str = Field(description="Registered model name of the adapter.")
    alias: str = Field("champion", description="Alias to follow; when it moves the adapter reloads.")
    served_name: str | None = Field(None, description="Model id for clients (default: registry_name).")
    base: str | None = Field(
        None, description="served_name of the base model group it runs on (default: the first engine's)."
    )

    @property
    def public_name(self) -> str:
        return self.served_name or self.registry_name


class EmbeddingsConfig(StrictModel):
    """The /v1/embeddings model (sentence-transformers, in the gateway process)."""

    enabled: bool = Field(True, description="Serve /v1/embeddings.")
    model: str = Field("all-MiniLM-L6-v2", description="Prepared default name or local folder.")
    served_name: str = Field("minilm", description="Model id clients send.")
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one request.")


class ApiKey(StrictModel):
    """A client key, stored as its sha256 (never in plain text)."""

    id: str = Field(description="Key id used in logs and metrics.")
    sha256: str = Field(description="sha256 hex digest of the key (see `llmops serve hash-key`).")
    generated: bool = Field(False, description="Created automatically by the first `llmops serve` (a local "
                            "default): not enough to serve on a non-loopback address.")
    created: float | None = Field(None, description="When it was created (epoch seconds), for `keys list`.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute (None: limits.default_rpm).")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute (None: limits.default_tpm).")


class AuthConfig(StrictModel):
    """Who may call the gateway. Keys come from ``keys`` (hashed, in the config) and from ``keys_file``
    (``llmops serve keys create``) or, replacing the file's keys, from the ``keys_env`` variable."""

    enabled: bool = Field(True, description="Require a Bearer key.")
    keys: list[ApiKey] = Field(default_factory=list, description="Allowed keys (hashed).")
    keys_file: str = Field(
        "data/serving/keys.json", description="Keys created by `llmops serve keys create` (sha256 only, mode 0600); "
        "the first `llmops serve` with no key anywhere creates one there and prints it once.")
    protect_ops: bool = Field(False, description="Also require a key for /ready and /metrics (/health stays open).")
    keys_env: str = Field(
        "LLMOPS_API_KEYS", description="Env var with keys as 'id:key,id2:key2' (hashed on load); when set it "
        "replaces the keys of the file.")


class LimitsConfig(StrictModel):
    """Request limits enforced before anything reaches an engine."""

    max_body_bytes: int = Field(2_000_000, ge=1024, description="Largest request body.")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request sets none.")
    max_n: int = Field(8, ge=1, description="Largest n (choices per request).")
    default_rpm: int = Field(600, ge=1, description="Requests per minute per key.")
    default_tpm: int = Field(200_000, ge=1, description="Tokens per minute per key.")
    max_concurrent_per_key: int = Field(64, ge=1, description="Requests of one key in flight at once (429 above).")
    max_prompts: int = Field(64, ge=1, description="Most prompts in one /v1/completions request.")
    max_messages: int = Field(512, ge=1, description="Most messages in one chat request.")
    max_stop: int = Field(8, ge=1, description="Most stop sequences.")
    max_tools: int = Field(128, ge=0, description="Most tool definitions in one request.")
    max_logit_bias: int = Field(300, ge=0, description="Most logit_bias entries.")
    max_response_format_bytes: int = Field(32_768, ge=256, description="Largest response_format (JSON schema).")
    inline_tokenize_chars: int = Field(
        20_000, ge=0, description="Prompts longer than this are tokenized in a worker thread, off the event loop.")


class SharedStateConfig(StrictModel):
    """Where per-key limits and in-flight slots live: in this process (one gateway, the default) or in Redis,
    shared by several gateways in front of the same engines."""

    redis_url: str | None = Field(
        None, description="redis://[user:password@]host:6379/0 (rediss:// for TLS, unix:///path.sock). None: in "
        "memory, per gateway.")
    redis_url_env: str = Field(
        "LLMOPS_REDIS_URL", description="Env var that, when set, gives the URL instead (keeps a password out of "
        "the config).")
    key_prefix: str = Field("llmops", min_length=1, description="Prefix of every Redis key (several deployments "
                            "on one Redis).")
    on_error: Literal["open", "closed"] = Field(
        "open", description="Redis unreachable: 'open' serves on this gateway's own in-memory limits and logs a "
        "warning; 'closed' answers 503 with Retry-After.")
    timeout_s: float = Field(0.25, gt=0, le=10, description="Redis connect and command timeout.")
    retry_s: float = Field(5, ge=0, description="After a Redis failure (on_error: open), how long this gateway "
                           "uses its own limits before it tries Redis again.")
    slot_lease_s: float = Field(
        900, gt=0, description="A concurrency slot held by a gateway that died is freed after this long.")
    usage_days: int = Field(35, ge=1, le=400, description="Days of per-key usage kept (GET /v1/usage).")

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return v


class RouterConfig(StrictModel):
    """How requests are spread over engines."""

    retries: int = Field(1, ge=0, le=5, description="Retries on another replica on connection errors.")
    timeout_s: float = Field(300, gt=0, description="Upstream request timeout.")
    cooldown_s: float = Field(5, ge=0, description="A failing replica is skipped for this long.")
    max_connections: int = Field(1024, ge=1, description="Open connections to the engines, streams included.")
    pool_timeout_s: float = Field(5, gt=0, description="Wait for a free connection; then 503 with Retry-After.")
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="Model id -> model ids to try when all its replicas fail."
    )


class RequestLogConfig(StrictModel):
    """The append-only request log monitoring reads."""

    enabled: bool = Field(True, description="Write one record per request.")
    path: str = Field("data/requestlog/requests.sqlite", description="SQLite file.")
    prompt_embeddings: bool = Field(False, description="Also store a MiniLM embedding of each prompt.")
    max_queue: int = Field(
        10_000, ge=1, description="Records waiting for the writer; beyond it records are dropped (counted in "
        "/metrics), so a slow disk never holds requests or memory.")
    max_embedding_queue: int = Field(
        1000, ge=1, description="With prompt_embeddings: prompts waiting for their embedding; past it a record is "
        "written without one (a burst must not queue prompts without bound).")
    retention_days: float | None = Field(30, gt=0, description="Records older than this are deleted (None: kept).")
    max_rows: int | None = Field(None, ge=1, description="Keep at most this many records, the newest (None: no cap).")
    unauthenticated_sample: float = Field(
        0.01, ge=0, le=1, description="Share of 401 (no or wrong key) requests written: a flood of them must not "
        "fill the log; /metrics still counts them all.")


class GuardrailsHookConfig(StrictModel):
    """Guardrails applied by the gateway."""

    enabled: bool = Field(False, description="Run input/output rails (pass-through when disabled).")
    config: str | None = Field(None, description="Guardrail policy YAML (configs/guardrails/...).")


class ServingConfig(StrictModel):
    """`llmops serve`: engines + gateway."""

    host: str = Field("127.0.0.1", description="Gateway interface.")
    port: int = Field(8000, ge=1, le=65535, description="Gateway port.")
    engines: list[EngineConfig] = Field(
        default_factory=lambda: [EngineConfig()], description="vLLM replicas (same served_name = one group)."
    )
    adapters: list[AdapterConfig] = Field(default_factory=list, description="Registry-tracked LoRA adapters.")
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig, description="Embeddings.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Replica routing.")
    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig, description="Request log.")
    state: SharedStateConfig = Field(
        default_factory=SharedStateConfig, description="Where limits live (Redis for several gateways).")
    guardrails: GuardrailsHookConfig = Field(
        default_factory=GuardrailsHookConfig, description="Guardrail hook."
    )
    rollout_poll_s: float = Field(10, ge=0, description="How often aliases and rollouts are checked (0: never).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Canary / shadow rollouts of a "
                                   "champion adapter's challenger (`llmops rollout`), and how they are decided.")
    unaudited_moves: Literal["follow", "ignore"] = Field(
        "follow", description="An alias moved outside the project (the MLflow UI, another tool) is recorded as "
        "unaudited either way; follow: serve the version it points at, ignore: keep serving the last audited one.")
    adapter_retire_s: float = Field(
        30, ge=0, description="An adapter version replaced by a newer one stays loaded in the engines this long, "
        "so that other gateways in front of the same engines (each polling every rollout_poll_s) switch first.")
    models_dir: str = Field("models", description="Where prepared default models live.")

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        ports = [e.port for e in self.engines if e.port and not e.url]
        if len(ports) != len(set(ports)):
            raise ValueError("engines must use distinct ports")
        if self.port in ports:
            raise ValueError("the gateway port must differ from the engine ports")
        polled = self.adapters and self.rollout_poll_s > 0
        if self.shared_engines() and polled and self.adapter_retire_s < 2 * self.rollout_poll_s:
            raise ValueError(f"adapter_retire_s ({self.adapter_retire_s:g}) must be at least twice rollout_poll_s "
                             f"({self.rollout_poll_s:g}) when engines are shared with other gateways: a replaced "
                             "adapter must stay loaded until every gateway has polled and switched")
        off = [e.name for e in self.engines if e.enable_lora is False and e.served_name in self.adapter_groups()]
        if off:
            raise ValueError(f"adapters are configured for engines with enable_lora: false ({', '.join(off)}); "
                             "set enable_lora: auto or true there")
        return self

    def shared_engines(self) -> bool:
        """Whether other gateways may use these engines (one reached by url, or with a shared key)."""
        return any(e.url or e.api_key_env for e in self.engines)

    def adapter_groups(self) -> set[str]:
        """served_name of every engine group an adapter runs on."""
        first = self.engines[0].served_name if self.engines else ""
        return {a.base or first for a in self.adapters}

    def lora_enabled(self, engine: EngineConfig) -> bool:
        """Whether ``engine`` starts with LoRA support (``enable_lora: auto`` resolved)."""
        if engine.enable_lora == "auto":
            return engine.served_name in self.adapter_groups()
        return engine.enable_lora
