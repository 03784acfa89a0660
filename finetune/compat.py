"""Serving gate: can the vLLM engines of a serving config load this LoRA adapter?

Checked from the adapter's files (``adapter_config.json`` and the tensor names in
``adapter_model.safetensors``), before anything is registered:

- a LoRA adapter (not DoRA, no bias, no ``modules_to_save``, a plain initialisation);
- its rank within the engine's ``max_lora_rank`` and LoRA enabled on the engine;
- every adapted module is one vLLM supports for the architecture;
- the base model it was trained on matches the model the engine serves (architecture and shapes).

Example::

    from finetune.compat import check_servable
    problems = check_servable("outputs/finetune/smollm2-qa/adapter", "configs/serving/default.yaml")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmops.errors import LLMOpsError

# Linear layers vLLM can adapt, per architecture (names as in the HF checkpoints).
_LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
SUPPORTED_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "MixtralForCausalLM": frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}),
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "Phi3ForCausalLM": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "GPTNeoXForCausalLM": frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
}
SHAPE_KEYS = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size", "vocab_size")
ADAPTER_INFO = "llmops_adapter.json"  # written by finetune.train next to the adapter files


class CompatError(LLMOpsError):
    """The adapter cannot be served by the configured vLLM engines."""


def base_signature(model_dir: str | Path) -> dict[str, Any]:
    """The architecture and shape fields of a model folder's config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {k: cfg.get(k) for k in SHAPE_KEYS}


def adapted_modules(adapter_dir: Path) -> tuple[set[str], set[str]]:
    """``(LoRA-adapted module leaf names, fully saved module names)`` from the tensor names."""
    from safetensors import safe_open

    lora, full = set(), set()
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return lora, full
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if any(p.startswith("lora_") for p in parts):
                i = next(i for i, p in enumerate(parts) if p.startswith("lora_"))
                lora.add(parts[i - 1])
            else:
                full.add(".".join(parts[:-1]).rsplit(".", 1)[-1])
    return lora, full


def check_adapter(adapter_dir: str | Path, base_dir: str | Path, max_lora_rank: int,
                  enable_lora: bool = True) -> list[str]:
    """Every reason the adapter in ``adapter_dir`` cannot be served on ``base_dir``; empty when it can."""
    adapter_dir = Path(adapter_dir)
    problems: list[str] = []
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        return [f"{adapter_dir} has no adapter_config.json: it is not a PEFT adapter folder."]
    cfg = json.loads(cfg_path.read_text())
    if not enable_lora:
        problems.append("the serving engine has enable_lora: false; set it to true to serve adapters.")
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}; vLLM serves only LORA adapters.")
    ranks = [int(cfg.get("r") or 0), *map(int, (cfg.get("rank_pattern") or {}).values())]
    if max(ranks) > max_lora_rank:
        problems.append(f"LoRA rank {max(ranks)} exceeds the engine's max_lora_rank {max_lora_rank}: "
                        f"train with lora.r <= {max_lora_rank} or raise max_lora_rank in the serving config.")
    if cfg.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM: set lora.use_dora: false.")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        problems.append("adapter bias is not supported by vLLM: set lora.bias: none.")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} are full weights vLLM cannot load with an "
                        "adapter: train without modules_to_save.")
    init = cfg.get("init_lora_weights", True)
    if init not in (True, False, "gaussian", None):
        problems.append(f"init_lora_weights={init!r} changes the base weights; vLLM cannot serve it.")

    lora_mods, full_mods = adapted_modules(adapter_dir)
    if not lora_mods:
        problems.append("adapter_model.safetensors is missing or holds no LoRA weights.")
    if full_mods and not cfg.get("modules_to_save"):
        problems.append(f"the adapter holds full weights for {sorted(full_mods)}, which vLLM cannot load.")

    base = base_signature(base_dir)
    arch = (base.get("architectures") or ["?"])[0]
    supported = SUPPORTED_MODULES.get(arch)
    if supported is None:
        problems.append(f"architecture {arch} is not in the LoRA compatibility table "
                        f"({', '.join(sorted(SUPPORTED_MODULES))}); add it to finetune/compat.py after "
                        "checking that vLLM serves LoRA for it.")
    elif lora_mods - supported:
        problems.append(f"target modules {sorted(lora_mods - supported)} are not supported by vLLM for {arch} "
                        f"(supported: {', '.join(sorted(supported))}).")

    info_path = adapter_dir / ADAPTER_INFO
    if info_path.is_file():
        trained_on = json.loads(info_path.read_text()).get("base_signature", {})
        diff = {k: (trained_on.get(k), base.get(k)) for k in SHAPE_KEYS if trained_on.get(k) != base.get(k)}
        if diff:
            shown = ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items())
            problems.append(f"the adapter was trained on another base model than the engine serves ({shown}).")
    return problems


def serving_target(serving_config: str | Path | None, base_dir: str | Path) -> tuple[Path, int, bool]:
    """``(base model folder, max_lora_rank, enable_lora)`` of the engine that would serve the adapter.

    With a serving config, its first engine's model is resolved; otherwise ``base_dir`` with vLLM's
    default rank limit (16).
    """
    if serving_config is None:
        return Path(base_dir), 16, True
    from llmops.assets import resolve_model
    from llmops.config import load_config, schema_for

    cfg = load_config(serving_config, schema_for("serving"))  # the config contract, not serving internals
    engine = cfg.engines[0]
    # "auto" turns LoRA on as soon as the serving config lists an adapter: this one would be
    return Path(resolve_model(engine.model)), engine.max_lora_rank, engine.enable_lora is not False


def ensure_servable(adapter_dir: str | Path, base_dir: str | Path, serving_config: str | Path | None) -> None:
    """Raise :class:`CompatError` listing every problem when the adapter cannot be served.

    Raises:
        CompatError: the adapter fails one or more checks.
    """
    served_base, max_rank, enabled = serving_target(serving_config, base_dir)
    problems = check_adapter(adapter_dir, served_base, max_rank, enabled)
    if problems:
        where = f" by {serving_config}" if serving_config else ""
        raise CompatError(f"The adapter in {adapter_dir} cannot be served{where}; nothing was registered:\n  - "
                          + "\n  - ".join(problems))
