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


def make_off_script_adapter(base_dir, out: Path, steps: int = 60, r: int = 8) -> Path:
    """A LoRA adapter trained (a few optimizer steps, ~20 s) to answer every chat prompt with one Cyrillic token
    over and over: answers in another script than an English question, which the gateway flags as degenerate.
    A deliberately bad challenger for rollout tests."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    target = tok.encode("ен", add_special_tokens=False)[-1]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r,
                                                  target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    prompts = [f"{w} {i}." for i, w in enumerate(["Say hello", "Tell me fact", "What is", "Write a poem about",
                                                   "Explain", "How do I", "Summarise", "Translate"])]
    seqs = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"] for p in prompts]
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    k = 6  # answer positions trained: the token after the prompt and after itself
    for _ in range(steps):
        loss = 0
        for ids in seqs:
            logits = peft_model(torch.tensor([ids + [target] * k])).logits[0, len(ids) - 1:len(ids) - 1 + k]
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.full((k,), target))
        optim.zero_grad()
        (loss / len(seqs)).backward()
        optim.step()
    peft_model.save_pretrained(out)
    return out


def first_release_request_log(path: Path, row: str) -> Path:
    """A request log as the first release wrote it (no answer, shadow or feedback columns) with one row
    (``row``: the SQL VALUES of (id, ts, endpoint, key_id, model, registry_version, status, guardrails))."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY, ts REAL NOT NULL, endpoint TEXT NOT NULL, "
                   "key_id TEXT, model TEXT, registry_version TEXT, status INTEGER NOT NULL, error_code TEXT, "
                   "stream INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER, completion_tokens INTEGER, "
                   "latency_ms REAL, ttft_ms REAL, guardrails TEXT, prompt_embedding BLOB)")
        db.execute("INSERT INTO requests (id, ts, endpoint, key_id, model, registry_version, status, guardrails) "
                   f"VALUES {row}")
    return path
