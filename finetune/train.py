"""LoRA fine-tuning with transformers' Trainer and peft, ending as a registered, servable adapter.

``run(cfg)`` loads and masks the data, trains the adapter (checkpoints, eval loss, MLflow logging),
checks that vLLM can serve it (``finetune.compat``) and registers it with lineage and the alias
``challenger``. Nothing is registered when any step fails.

Example::

    from finetune.train import FinetuneConfig, run
    from llmops.config import load_config
    result = run(load_config("configs/finetune/default.yaml", FinetuneConfig, ["training.max_steps=10"]))
    print(result.version.ref, result.metrics["eval_loss"])
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from finetune.compat import ADAPTER_INFO, base_signature, ensure_servable
from finetune.data import IGNORE, Collator, DataConfig, load_rows, pack, split_train_val, tokenize_rows
from llmops.config import StrictModel, config_hash
from llmops.contracts import RegistryAPI
from llmops.errors import LLMOpsError

log = logging.getLogger(__name__)


class FinetuneError(LLMOpsError):
    """A training run cannot start or continue as configured."""


class LoraSettings(StrictModel):
    """The LoRA adapter (peft.LoraConfig)."""

    r: int = Field(8, ge=1, le=512, description="Rank; must be <= the serving engines' max_lora_rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers to adapt (module leaf names), or all-linear.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Train biases (vLLM: none only).")
    use_dora: bool = Field(False, description="DoRA (vLLM cannot serve it).")
    modules_to_save: list[str] | None = Field(None, description="Fully trained modules (vLLM cannot serve).")


class TrainingSettings(StrictModel):
    """The optimisation loop (transformers.TrainingArguments)."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training set (ignored with max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    batch_size: int = Field(8, ge=1, description="Sequences per device step.")
    grad_accum: int = Field(1, ge=1, description="Steps accumulated per optimiser update.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of the LoRA weights.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs and CPUs that support it (AVX512-BF16/AMX), else fp32.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models).")
    selective_logits: bool = Field(True, description="Compute LM-head logits only where a label is trained "
                                   "(same loss, faster with completion-only masking).")
    qlora: bool = Field(False, description="4-bit base weights via bitsandbytes (CUDA only).")
    eval_steps: int = Field(25, ge=1, description="Evaluate the validation loss every N steps.")
    logging_steps: int = Field(5, ge=1, description="Log loss / learning rate every N steps.")
    save_steps: int = Field(25, ge=1, description="Checkpoint every N steps (for --resume).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default).")
    seed: int = Field(0, description="Seed for weight init, dropout and data order.")


class FinetuneConfig(StrictModel):
    """A fine-tuning run, from base model and data to a registered adapter."""

    name: str = Field("smollm2-qa", description="Run name and registered adapter name.")
    base_model: str = Field("smollm2-135m-instruct", description="Prepared default, local HF folder, "
                            "registry reference (name@alias) or hub id.")
    data: DataConfig = Field(description="Training data and tokenization.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The LoRA adapter.")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="The optimisation loop.")
    output_dir: str = Field("outputs/finetune", description="Checkpoints and the adapter go to <output_dir>/<name>.")
    serving_config: str | None = Field("configs/serving/default.yaml",
                                       description="Serving config whose engines must be able to load the "
                                       "adapter (None: vLLM defaults).")
    register_adapter: bool = Field(True, description="Register the adapter in the registry.")
    alias: str | None = Field("challenger", description="Alias set on the new version.")

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.training.qlora and self.training.precision == "fp32":
            raise ValueError("training.qlora needs precision bf16/fp16/auto, not fp32")
        return self


@dataclass
class FinetuneResult:
    adapter_dir: Path
    version: Any | None  # llmops.registry.ModelVersion
    metrics: dict[str, float]
    data_stats: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None


def choose_precision(setting: str, cuda: bool) -> str:
    """The precision to train in (``auto``: :func:`llmops.hardware.resolve_dtype`); raises for fp16 without CUDA."""
    from llmops.hardware import resolve_dtype

    if setting == "auto":
        choice = resolve_dtype("auto", cuda=cuda)
        log.info("precision auto -> %s (%s)", choice.dtype, choice.reason)
        return {"bfloat16": "bf16", "float16": "fp16"}.get(choice.dtype, "fp32")
    if setting == "fp16" and not cuda:
        raise FinetuneError("precision fp16 needs a CUDA GPU; use bf16 or fp32 (or auto) on CPU.")
    return setting


def base_model_ref(ref: str, path: Path, registry: RegistryAPI) -> str:
    """The registry version of the base model (``name/version``) when it is registered, else ``ref``."""
    from llmops.registry import parse_ref, sha256_path

    if "@" in ref or (ref.count("/") == 1 and ref.rsplit("/", 1)[1].isdigit()):
        name, alias, version = parse_ref(ref)
        return f"{name}/{registry.alias_version(name, alias) if alias else version}"
    versions = registry.versions(path.name) if path.name in registry.models() else []
    if versions:
        digest = sha256_path(path)
        for v in reversed(versions):
            if v.tags.get("llmops.content_sha256") == digest:
                return v.ref
    return ref


def _load_model(path: str, precision: str, qlora: bool, cuda: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise FinetuneError(f"Cannot load the base model from {path}: {e}") from e


def _check_qlora(cuda: bool) -> None:
    if not cuda:
        raise FinetuneError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. "
                            "Set training.qlora: false to train a regular LoRA adapter.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise FinetuneError("QLoRA needs bitsandbytes: pip install bitsandbytes (GPU machines only).") from e


def _mlflow_callback(registry: RegistryAPI, run_id: str, train_set: _ListDataset) -> Any:
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        """Per-step loss, learning rate, eval loss and tokens/s into the MLflow run."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.tokens0 = 0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0, self.tokens0 = time.perf_counter(), train_set.tokens

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            metrics = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
            elapsed = time.perf_counter() - self.t0
            if elapsed > 0 and "loss" in metrics:
                metrics["tokens_per_s"] = (train_set.tokens - self.tokens0) / elapsed
            registry.log_metrics(run_id, metrics, step=state.global_step)

    return MlflowMetrics()


def _trainer_class() -> type:
    from transformers import Trainer

    class CompletionOnlyTrainer(Trainer):
        """Computes logits only where a label is trained.

        With completion-only masking most positions carry no label; skipping the LM head (576 x 49k
        for SmolLM2) and the fp32 softmax there is ~20% faster per step on CPU, same loss.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            import torch.nn.functional as F

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if (return_outputs or not self.selective_logits
                    or getattr(base.config, "final_logit_softcapping", None)):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            kwargs = {k: v for k, v in inputs.items() if k in ("attention_mask", "position_ids")}
            hidden = base.get_decoder()(input_ids=inputs["input_ids"], use_cache=False, **kwargs).last_hidden_state
            target = labels[:, 1:]
            keep = target != IGNORE
            logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
            if num_items_in_batch is not None:
                n = num_items_in_batch.to(logits.device) if hasattr(num_items_in_batch, "to") else num_items_in_batch
                return F.cross_entropy(logits, target[keep], reduction="sum") / n
            return F.cross_entropy(logits, target[keep])

    return CompletionOnlyTrainer


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def run(cfg: FinetuneConfig, *, resume: bool = False, registry: RegistryAPI | None = None,
        callbacks: list[Any] | None = None) -> FinetuneResult:
    """Train a LoRA adapter and register it; all or nothing.

    Args:
        cfg: the run's configuration.
        resume: continue from the last checkpoint in ``<output_dir>/<name>/checkpoints``.
        registry: a :class:`llmops.registry.Registry` (default: the configured one).
        callbacks: extra transformers ``TrainerCallback`` objects (tests use one to interrupt).

    Raises:
        DataError: unusable training data. FinetuneError: model/precision/QLoRA/resume problems.
        CompatError: vLLM could not serve the adapter. RegistryError: registration failed.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, TrainingArguments

    from llmops.assets import resolve_model
    from llmops.registry import Lineage, Registry

    cuda = torch.cuda.is_available()
    if cfg.training.qlora:
        _check_qlora(cuda)
    precision = choose_precision(cfg.training.precision, cuda)
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    base_path = Path(resolve_model(cfg.base_model))
    if not (base_path / "config.json").is_file():
        raise FinetuneError(f"Base model {cfg.base_model!r} resolved to {base_path}, which has no config.json.")
    work = Path(cfg.output_dir) / cfg.name
    ckpt_dir = work / "checkpoints"
    last = _last_checkpoint(ckpt_dir) if resume else None
    if resume and last is None:
        raise FinetuneError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start afresh.")

    rows, fmt, digest = load_rows(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenized = tokenize_rows(tokenizer, rows, fmt, cfg.data.max_length)
    if not tokenized.examples:
        raise FinetuneError("No example has a trained token left after truncation; raise data.max_length.")
    train_ex, val_ex = split_train_val(tokenized.examples, cfg.data.val_fraction, cfg.data.seed)
    if cfg.data.packing:
        train_ex, val_ex = pack(train_ex, cfg.data.max_length), pack(val_ex, cfg.data.max_length)
    stats = dict(tokenized.stats, format=fmt, train_sequences=len(train_ex), val_sequences=len(val_ex))
    log.info("data: %s", stats)

    model = _load_model(str(base_path), precision, cfg.training.qlora, cuda)
    # With a KV cache transformers skips the block-diagonal mask of packed sequences; training needs none.
    model.config.use_cache = False
    if cfg.training.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, cfg.training.gradient_checkpointing)
    elif cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = cfg.lora
    model = get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        bias=lora.bias, use_dora=lora.use_dora, modules_to_save=lora.modules_to_save, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()

    registry = registry or Registry()
    base_ref = base_model_ref(cfg.base_model, base_path, registry)
    lineage = Lineage(dataset_sha256=digest, base_model=base_ref, config_hash=config_hash(cfg),
                      extra={"dataset_path": cfg.data.path})
    state_file = work / "run.json"
    run_id = json.loads(state_file.read_text())["run_id"] if resume and state_file.is_file() else None
    if run_id is None:
        run_id = registry.start_run(f"finetune-{cfg.name}", tags={"llmops.kind": "adapter", **lineage.tags()},
                                    params=_flat_params(cfg, precision, trainable, stats))
        registry.log_dataset(run_id, Path(cfg.data.path).name, digest, str(Path(cfg.data.path).resolve()),
                             rows=len(rows))
        work.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"run_id": run_id, "config_hash": config_hash(cfg)}))

    collator = Collator(tokenizer.pad_token_id, cfg.data.max_length if cfg.data.pad_to_max_length else None)
    t = cfg.training
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate, num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,  # <1: a ratio
        weight_decay=t.weight_decay, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda,
        logging_steps=t.logging_steps, eval_strategy="steps" if val_ex else "no", eval_steps=t.eval_steps,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        report_to=[], disable_tqdm=False, remove_unused_columns=False, seed=t.seed, data_seed=t.seed,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    train_set = _ListDataset(train_ex)
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_set,
                                 eval_dataset=_ListDataset(val_ex) if val_ex else None,
                                 data_collator=collator,
                                 callbacks=[_mlflow_callback(registry, run_id, train_set), *(callbacks or [])])
    trainer.selective_logits = t.selective_logits
    metrics: dict[str, float] = {"trainable_params": trainable, "total_params": total}
    try:
        if val_ex and last is None:
            metrics["eval_loss_start"] = trainer.evaluate()["eval_loss"]
            registry.log_metrics(run_id, {"eval_loss": metrics["eval_loss_start"]}, step=0)
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=last)
        elapsed = time.perf_counter() - t0
        metrics.update(train_loss=out.training_loss, train_runtime_s=elapsed, steps=trainer.state.global_step,
                       tokens_per_s=train_set.tokens / elapsed if elapsed else 0.0)
        if val_ex:
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        registry.log_metrics(run_id, {k: v for k, v in metrics.items() if k != "steps"},
                             step=trainer.state.global_step)

        adapter_dir = work / "adapter"
        tmp = work / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        (tmp / ADAPTER_INFO).write_text(json.dumps({
            "name": cfg.name, "base_model": base_ref, "base_path": str(base_path),
            "base_signature": base_signature(base_path), "dataset_sha256": digest, "data": stats,
            "config_hash": config_hash(cfg), "precision": precision, "metrics": metrics}, indent=2))
        ensure_servable(tmp, base_path, cfg.serving_config)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp.rename(adapter_dir)
        version = None
        if cfg.register_adapter:
            version = registry.register(
                cfg.name, adapter_dir, kind="adapter", lineage=lineage, run_id=run_id,
                aliases=[cfg.alias] if cfg.alias else [], reason=f"fine-tuned on {Path(cfg.data.path).name}")
        registry.end_run(run_id, "FINISHED")
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        registry.end_run(run_id, status)
        raise
    log.info("adapter %s: eval loss %s -> %s", version.ref if version else adapter_dir,
             _fmt(metrics.get("eval_loss_start")), _fmt(metrics.get("eval_loss")))
    return FinetuneResult(adapter_dir, version, metrics, stats, run_id)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _flat_params(cfg: FinetuneConfig, precision: str, trainable: int, stats: dict) -> dict[str, Any]:
    from llmops.hardware import cpu_summary

    cpu = cpu_summary()
    params = {"base_model": cfg.base_model, "precision": precision, "trainable_params": trainable,
              "hardware.cpu_model": cpu["model"], "hardware.cpu_flags": ",".join(cpu["flags"]) or "none"}
    for section in ("data", "lora", "training"):
        for k, v in getattr(cfg, section).model_dump().items():
            params[f"{section}.{k}"] = v
    params.update({f"data_stats.{k}": v for k, v in stats.items()})
    return params


class _ListDataset:
    """A list of token dicts as a map-style dataset (Trainer only needs len and getitem).

    ``tokens`` counts the real (non-pad) tokens handed out, for tokens/s.
    """

    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        self.tokens += len(self.items[i]["input_ids"])
        return self.items[i]
