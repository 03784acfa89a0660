"""Merge a LoRA adapter into its base model and write a full HF model folder.

For engines or tools that cannot load adapters. The folder is written next to its destination and
renamed into place, so a failed export leaves nothing behind::

    from finetune.export import merge_adapter
    merge_adapter("smollm2-qa@champion", "outputs/merged/smollm2-qa")
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from finetune.compat import ADAPTER_INFO
from llmops.errors import LLMOpsError

log = logging.getLogger(__name__)


class ExportError(LLMOpsError):
    """The adapter cannot be merged as asked."""


def merge_adapter(adapter: str, out: str | Path, base: str | None = None) -> Path:
    """Merge ``adapter`` (folder or registry reference) into ``base`` and save to ``out``.

    ``base`` defaults to the base model recorded with the adapter. Returns the output folder.

    Raises:
        ExportError: ``out`` exists, or the adapter / base cannot be found.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.assets import resolve_model

    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; choose another --out or remove it.")
    adapter_dir = Path(resolve_model(adapter))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json).")
    if base is None:
        info = adapter_dir / ADAPTER_INFO
        recorded = json.loads(info.read_text()).get("base_path") if info.is_file() else None
        recorded = recorded or json.loads((adapter_dir / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
        if not recorded or not Path(recorded).exists():
            raise ExportError(f"The adapter's base model ({recorded}) is not available here; pass --base.")
        base = recorded
    base_path = resolve_model(base)
    log.info("merging %s into %s", adapter_dir, base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(base_path).save_pretrained(str(tmp))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
