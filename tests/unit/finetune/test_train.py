"""A real LoRA run on the tiny model: only adapter weights change, loss drops, lineage, resume, gate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from finetune.compat import CompatError, check_adapter
from finetune.train import FinetuneConfig, FinetuneError, run
from llmops.registry import sha256_path

pytestmark = pytest.mark.slow


def make_cfg(repo_root, tiny_model_dir, tmp_path, **over):
    raw = {
        "name": "tiny-qa",
        "base_model": str(tiny_model_dir),
        "data": {"path": str(repo_root / "examples/finetune/context_qa.jsonl"), "where": {"split": "train"},
                 "max_samples": 48, "max_length": 256, "val_fraction": 0.15},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 0.003, "eval_steps": 3, "save_steps": 2,
                     "logging_steps": 1, "precision": "fp32"},
        "output_dir": str(tmp_path / "out"),
        "serving_config": None,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[key] = value
    return FinetuneConfig.model_validate(raw)


class Snapshot(TrainerCallback):
    """Copies every parameter at the start and the end of training."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kw):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("registry", ["sqlite", "server"], indirect=True)  # also a team's server
def test_lora_run_changes_only_adapter_weights_lowers_loss_and_registers_with_lineage(
        repo_root, tiny_model_dir, tmp_path, registry):
    snap = Snapshot()
    cfg = make_cfg(repo_root, tiny_model_dir, tmp_path)
    res = run(cfg, registry=registry, callbacks=[snap])

    changed = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # B starts at zero: it must have moved
    assert res.metrics["eval_loss"] < res.metrics["eval_loss_start"]
    assert res.metrics["tokens_per_s"] > 0 and res.metrics["steps"] == 6

    v = res.version
    assert v.kind == "adapter" and v.aliases == ("challenger",)
    tags = v.tags
    assert tags["lineage.dataset_sha256"] == sha256_path(cfg.data.path)
    assert tags["lineage.base_model"] == str(tiny_model_dir)
    assert len(tags["lineage.config_hash"]) == 64 and tags["lineage.git_commit"]
    files = {p.name for p in registry.resolve("tiny-qa@challenger").local_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "llmops_adapter.json"} <= files

    client = registry.client
    hist = client.get_metric_history(res.run_id, "loss")
    assert len(hist) == 6 and [m.step for m in hist] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(res.run_id, "eval_loss")][0] == 0
    run_info = client.get_run(res.run_id)
    assert run_info.info.status == "FINISHED"
    ds = run_info.inputs.dataset_inputs[0].dataset
    assert json.loads(ds.profile)["sha256"] == tags["lineage.dataset_sha256"]
    assert run_info.data.params["lora.r"] == "8"


class Interrupt(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_interrupted_run_registers_nothing_and_resumes_from_its_checkpoint(
        repo_root, tiny_model_dir, tmp_path, registry):
    cfg = make_cfg(repo_root, tiny_model_dir, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, registry=registry, callbacks=[Interrupt(3)])
    assert "tiny-qa" not in registry.models()
    ckpts = sorted(p.name for p in (tmp_path / "out/tiny-qa/checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"]
    run_id = json.loads((tmp_path / "out/tiny-qa/run.json").read_text())["run_id"]
    assert registry.client.get_run(run_id).info.status == "KILLED"

    seen = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(state.global_step)

    res = run(cfg, registry=registry, resume=True, callbacks=[Steps()])
    assert seen == [3, 4, 5, 6]  # continued after checkpoint-2, not from scratch
    assert res.run_id == run_id and res.version.version == 1
    assert len(registry.client.get_metric_history(run_id, "loss")) >= 6


def test_resume_without_checkpoint_is_a_clear_error(repo_root, tiny_model_dir, tmp_path, registry):
    with pytest.raises(FinetuneError, match="no checkpoint"):
        run(make_cfg(repo_root, tiny_model_dir, tmp_path), registry=registry, resume=True)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"lora__r": 32}, "LoRA rank 32 exceeds the engine's max_lora_rank 16"),
        ({"lora__modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"lora__target_modules": ["q_proj", "embed_tokens"]}, r"target modules \['embed_tokens'\]"),
    ],
)
def test_serving_gate_refuses_unservable_adapters_and_nothing_is_registered(
        repo_root, tiny_model_dir, tmp_path, registry, over, message):
    cfg = make_cfg(repo_root, tiny_model_dir, tmp_path, training__max_steps=1, data__val_fraction=0.0, **over)
    with pytest.raises(CompatError, match=message):
        run(cfg, registry=registry)
    assert "tiny-qa" not in registry.models()
    assert not (tmp_path / "out/tiny-qa/adapter").exists()


def test_bad_base_model_and_qlora_on_cpu_are_clear_errors(repo_root, tiny_model_dir, tmp_path, registry):
    from llmops.errors import AssetError

    with pytest.raises(AssetError, match="does not exist"):
        run(make_cfg(repo_root, tiny_model_dir, tmp_path, base_model=str(tmp_path / "no-such-model")),
            registry=registry)
    if not torch.cuda.is_available():
        with pytest.raises(FinetuneError, match="QLoRA needs a CUDA GPU"):
            run(make_cfg(repo_root, tiny_model_dir, tmp_path, training__qlora=True, training__precision="bf16"),
                registry=registry)
    assert registry.models() == []


def test_gate_accepts_a_good_adapter_and_checks_the_base(repo_root, tiny_model_dir, base_model_dir, tmp_path,
                                                         registry):
    res = run(make_cfg(repo_root, tiny_model_dir, tmp_path, training__max_steps=1, data__val_fraction=0.0,
                       register_adapter=False), registry=registry)
    assert res.version is None and registry.models() == []
    assert check_adapter(res.adapter_dir, tiny_model_dir, max_lora_rank=16) == []
    problems = check_adapter(res.adapter_dir, base_model_dir, max_lora_rank=8, enable_lora=False)
    assert any("enable_lora" in p for p in problems)
    assert any("another base model" in p and "num_hidden_layers: 2 vs 30" in p for p in problems)
    # the shipped serving config serves SmolLM2: the tiny adapter is refused by it
    from finetune.compat import ensure_servable

    with pytest.raises(CompatError, match="another base model"):
        ensure_servable(res.adapter_dir, tiny_model_dir, repo_root / "configs/serving/default.yaml")


def test_export_merges_the_adapter_into_an_equivalent_full_model(repo_root, tiny_model_dir, tmp_path, registry):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.export import ExportError, merge_adapter

    res = run(make_cfg(repo_root, tiny_model_dir, tmp_path, training__max_steps=2, data__val_fraction=0.0),
              registry=registry)
    out = merge_adapter(str(res.adapter_dir), tmp_path / "merged")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    x = torch.tensor([[1, 5, 9, 200, 3000]])
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir),
                                                                          dtype=torch.float32),
                                     str(res.adapter_dir)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, peft(x).logits, atol=1e-4)
    with pytest.raises(ExportError, match="already exists"):
        merge_adapter(str(res.adapter_dir), out)


def test_selective_logits_loss_equals_the_standard_causal_lm_loss(tiny_model_dir):
    """The default loss (logits only where labels are trained) is transformers' own shifted cross-entropy
    over the same batch, with and without num_items_in_batch; an off-by-one in the shift would differ."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.data import IGNORE
    from finetune.train import _trainer_class

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a LoRA that changes the logits, as after some training
    input_ids = torch.randint(5, base.config.vocab_size, (2, 24))
    labels = input_ids.clone()
    labels[0, :10] = IGNORE  # the prompt part of each row is not trained
    labels[1, :15] = IGNORE
    labels[1, 20:] = IGNORE
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    compute_loss = _trainer_class().compute_loss
    with torch.no_grad():
        expected = model(**inputs).loss
        ours = compute_loss(SimpleNamespace(selective_logits=True), model, dict(inputs))
        trained = int((labels[:, 1:] != IGNORE).sum())
        ours_sum = compute_loss(SimpleNamespace(selective_logits=True), model, dict(inputs),
                                num_items_in_batch=torch.tensor(trained))
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)
    assert float(ours_sum) == pytest.approx(float(expected), rel=1e-5)
