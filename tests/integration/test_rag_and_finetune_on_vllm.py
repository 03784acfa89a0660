"""RAG answers and fine-tuned adapters against the real vLLM engine (shared session server)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def rag(vllm_base, embedding_model_dir, repo_root, tmp_path_factory):
    from llmops.registry import Registry, RegistryConfig
    from rag.embed import EmbeddingConfig, LocalEmbedder
    from rag.pipeline import RAGConfig, RAGPipeline

    tmp = tmp_path_factory.mktemp("rag")
    cfg = RAGConfig.model_validate({
        "store": {"path": ":memory:"},
        "generation": {"base_url": f"{vllm_base}/v1", "model": "smollm2", "max_tokens": 80},
        "manifest_dir": str(tmp / "manifests"),
        "retrieval": {"top_k": 3},
    })
    pipe = RAGPipeline(cfg, embedder=LocalEmbedder(EmbeddingConfig(model=str(embedding_model_dir))),
                       registry=Registry(RegistryConfig(root=str(tmp / "mlruns"))))
    pipe.ingest([repo_root / "docs"])
    return pipe


def test_ask_cites_retrieved_chunks(rag):
    # the 135M model does not always cite on its own: vLLM's structured output (passed through
    # generation.extra_body) holds it to "one sentence [n]", so the answer has citations to map back
    rag.cfg.generation.extra_body = {"structured_outputs": {"regex": r"[A-Za-z0-9 ,'-]{10,120} \[[1-3]\]\."}}
    try:
        ans = rag.ask("Which HTTP header carries the API key for the gateway?")
    finally:
        rag.cfg.generation.extra_body = {}
    assert ans.contexts and len(ans.contexts) == 3 and ans.text and not ans.blocked
    assert len(ans.citations) == 1 and ans.invalid_citations == []
    number = int(ans.text.rsplit("[", 1)[1].split("]")[0])
    cited = ans.citations[0]
    # the citation is the retrieved chunk with that number: same id, source and text
    assert cited is ans.contexts[number - 1] and cited.chunk_id and cited.source.endswith(".md")
    assert ans.usage["completion_tokens"] > 0 and ans.model == "smollm2"


def test_async_ask_answers_concurrently(rag):
    import asyncio

    async def many():
        return await asyncio.gather(*[rag.aask(q) for q in (
            "How do I stop the server?", "What does exit code 1 of llmops drift mean?",
            "Where is the request log stored?")])

    answers = asyncio.run(many())
    assert all(a.text and a.contexts for a in answers)


def test_a_finetuned_adapter_passes_the_gate_and_the_engine_answers_with_it(vllm_engine, base_model_dir,
                                                                          repo_root, tmp_path):
    from finetune.train import FinetuneConfig, run
    from llmops.registry import Registry, RegistryConfig

    registry = Registry(RegistryConfig(root=str(tmp_path / "mlruns")))
    cfg = FinetuneConfig.model_validate({
        "name": "smollm2-qa-it", "base_model": str(base_model_dir),
        "data": {"path": str(repo_root / "examples/finetune/context_qa.jsonl"), "where": {"split": "train"},
                 "max_samples": 16, "val_fraction": 0.0},
        "training": {"max_steps": 2, "batch_size": 4, "save_steps": 100},
        "output_dir": str(tmp_path / "out"),
        "serving_config": str(repo_root / "configs/serving/default.yaml"),
    })
    res = run(cfg, registry=registry)
    assert res.version.aliases == ("challenger",)
    path = str(registry.resolve("smollm2-qa-it@challenger").local_path)
    vllm_engine.load_adapter("qa-adapter", path)
    try:
        models = {m["id"] for m in httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]}
        assert "qa-adapter" in models
        from openai import OpenAI

        client = OpenAI(base_url=f"{vllm_engine.url}/v1", api_key="unused")
        r = client.chat.completions.create(model="qa-adapter", max_tokens=20, temperature=0, messages=[
            {"role": "user", "content": "Context:\n[1] The Orvane bridge is 412 metres long.\n\n"
                                        "Question: How long is the Orvane bridge?"}])
        assert r.model == "qa-adapter" and r.choices[0].message.content.strip()
    finally:
        vllm_engine.unload_adapter("qa-adapter")


def test_with_every_adapter_slot_filled_each_model_keeps_its_own_answers(vllm_engine, base_model_dir, tmp_path):
    """Two adapters in an engine with ``max_loras=2`` fill every slot. The engine runs the project's CPU LoRA
    ops (serving/vllm_lora_cpu.py, which vLLM loads as a plugin): the base model answers as before the
    adapters came, alone and in one batch with both adapters (a base token, slot index -1, gets no delta:
    vLLM's own CPU ops gave it the last slot's adapter), and each adapter answers with its own slot."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI
    from testkit import make_adapter

    client = OpenAI(base_url=f"{vllm_engine.url}/v1", api_key="unused")

    def answer(model: str) -> list[str]:
        r = client.completions.create(model=model, prompt="The three primary colours are", max_tokens=12,
                                      temperature=0, logprobs=1)
        return r.choices[0].logprobs.tokens

    before = answer("smollm2")
    names, loaded = ["slot-a", "slot-b"], []
    try:
        for seed, name in enumerate(names, start=1):
            vllm_engine.load_adapter(name, str(make_adapter(base_model_dir, tmp_path / name, seed=seed, r=8)))
            loaded.append(name)
        adapted = {name: answer(name) for name in names}  # both adapters active: both slots hold weights
        assert adapted["slot-a"] != adapted["slot-b"], "two different adapters answer differently"
        assert any(a != before for a in adapted.values())
        assert answer("smollm2") == before
        # one batch with a base request and both adapters (slot indices -1, 0, 1): each keeps its own answer
        # (the first tokens: greedy decoding in another batch shape may part later on a near tie)
        with ThreadPoolExecutor(3) as pool:
            mixed = dict(zip(["smollm2", *names], pool.map(answer, ["smollm2", *names]), strict=True))
        solo = {"smollm2": before, **adapted}
        assert {m: t[:4] for m, t in mixed.items()} == {m: t[:4] for m, t in solo.items()}
    finally:
        for name in loaded:
            vllm_engine.unload_adapter(name)
    assert "vLLM's CPU LoRA ops replaced" in vllm_engine.log_path.read_text(errors="replace")
