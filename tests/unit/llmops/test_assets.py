from __future__ import annotations

import json
import shutil

import pytest

from llmops.assets import (
    MANIFEST,
    AssetsConfig,
    EmbeddingAsset,
    TinyAsset,
    build_embedding,
    build_tiny,
    prepare,
    resolve_model,
    verify,
)
from llmops.errors import AssetError


def test_prepared_models_verify_and_prepare_is_idempotent(base_model_dir, repo_root):
    result = prepare(AssetsConfig(models_dir=str(repo_root / "models")))
    assert result.built == ()  # everything was ready: nothing rebuilt
    manifest = verify(base_model_dir)
    assert manifest["source"]["sha256"] == AssetsConfig().base_llm.sha256
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    config = json.loads((base_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"


def test_corruption_is_detected(tiny_model_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    verify(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="corrupted.*make assets FORCE=1"):
        verify(copy)
    (copy / "config.json").unlink()
    with pytest.raises(AssetError, match="missing"):
        verify(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(AssetError, match="not a prepared asset"):
        verify(copy)


def test_embedding_source_hash_checked_and_nothing_written(tmp_path):
    dest = tmp_path / "emb"
    with pytest.raises(AssetError, match="sha256 .* expected"):
        build_embedding(EmbeddingAsset(sha256="0" * 64), dest)
    assert not dest.exists()
    assert not list(tmp_path.iterdir())  # no partial folder left behind
    build_embedding(EmbeddingAsset(), dest)
    verify(dest)


def test_missing_source_package_says_how_to_fix(tmp_path):
    with pytest.raises(AssetError, match="make setup"):
        build_embedding(EmbeddingAsset(package="no_such_package_xyz"), tmp_path / "e")


def test_tiny_is_deterministic_and_loads(base_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    build_tiny(TinyAsset(), base_model_dir, tmp_path / "a")
    build_tiny(TinyAsset(), base_model_dir, tmp_path / "b")
    a, b = verify(tmp_path / "a"), verify(tmp_path / "b")
    assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert model.config.num_hidden_layers == 2


def test_resolve_model(base_model_dir, tmp_path, repo_root, monkeypatch):
    assert resolve_model("smollm2-135m-instruct", repo_root / "models") == str(base_model_dir)
    assert resolve_model(str(base_model_dir)) == str(base_model_dir)
    with pytest.raises(AssetError, match="make assets"):
        resolve_model("tiny-llama", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(AssetError, match="does not exist"):
        resolve_model("./nowhere/model")
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model(hub_id, tmp_path) == hub_id  # fetched by transformers/vLLM where online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match="HF_HUB_OFFLINE=1"):
        resolve_model(hub_id, tmp_path)


@pytest.mark.slow
def test_base_model_answers_in_english_with_transformers_and_loads_in_peft(base_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 1_000_000


def test_register_defaults_is_idempotent(registry, repo_root):
    from llmops.assets import register_defaults

    result = prepare(AssetsConfig(models_dir=str(repo_root / "models")))
    first = register_defaults(result, registry)
    again = register_defaults(result, registry)
    assert {n: v.version for n, v in first.items()} == {n: v.version for n, v in again.items()}
    resolved = registry.resolve("smollm2-135m-instruct@champion")
    assert resolved.kind == "base_model"
    assert resolved.tags["lineage.source_sha256"] == AssetsConfig().base_llm.sha256
    verify(resolved.local_path)  # the registered copy is byte-identical to the prepared folder
