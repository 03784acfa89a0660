"""Small helpers several test modules share (importable as ``testkit``: tests/ is on the path)."""

from __future__ import annotations

import time
from pathlib import Path


def wait_until(condition, timeout: float, every: float = 0.5) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def make_adapter(base_dir, out: Path, seed: int, r: int = 8) -> Path:
    """A LoRA adapter for the model in ``base_dir`` (q/v projections; random B, so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    peft_model.save_pretrained(out)
    return out
