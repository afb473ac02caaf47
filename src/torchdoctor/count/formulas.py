"""FLOP formulas that ``torch.utils.flop_counter`` lacks, handed to ``FlopCounterMode(custom_mapping=...)``.

PyTorch's registry has no entry for these ops, so ``FlopCounterMode`` counts them as zero:

- ``aten._native_multi_head_attention`` and ``aten._transformer_encoder_layer_fwd``: the fused fast paths
  that ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` take in eval mode under ``no_grad``
  (why FlopCounterMode reports 11.27 G instead of 17.56 G for ViT-B/16). One op does the QKV projection,
  both attention matmuls and the output projection (and the FFN), so the formula adds those up.
- ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ backward): the CPU kernel behind
  ``F.scaled_dot_product_attention``; the registry knows only the CUDA flash/efficient/cudnn kernels.
- ``aten.mv``, ``addmv``, ``dot``, ``vdot``, ``addbmm``, ``_int_mm``: matmuls of other ranks.

The formulas are passed per counter, never registered globally, so nothing outside a count changes.
Every one returns FLOPs = 2 x MACs, like PyTorch's own matmul and attention formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """QK^T and AV of ``(..., L, E)`` attention, via PyTorch's ``sdpa_flop_count`` (grouped KV heads too)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(*_as_bhsd(query_shape, key_shape, value_shape))


def attention_backward_flops(grad_shape: Sequence[int], query_shape: Sequence[int], key_shape: Sequence[int],
                             value_shape: Sequence[int]) -> int:
    """Backward of ``attention_flops`` via PyTorch's ``sdpa_backward_flop_count`` (recomputes the scores)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    query, key, value = _as_bhsd(query_shape, key_shape, value_shape)
    return sdpa_backward_flop_count((*query[:3], value[3]), query, key, value)


def _as_bhsd(query: Sequence[int], key: Sequence[int], value: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """``(..., L, E)`` shapes as ``(batch, heads, L, E)``; grouped KV heads repeated to the query's heads."""
    batch = math.prod(query[:-2])
    length, source = query[-2], key[-2]
    return (batch, 1, length, query[-1]), (batch, 1, source, key[-1]), (batch, 1, source, value[-1])


def multi_head_attention_flops(query_lengths: Sequence[int], key_lengths: Sequence[int], embed_dim: int) -> int:
    """Q, K, V projections + QK^T + AV + output projection, summed over sequences (2 FLOPs per MAC)."""
    macs = 0
    for length, source in zip(query_lengths, key_lengths, strict=True):
        projections = (2 * length + 2 * source) * embed_dim * embed_dim  # Q and output: L rows; K and V: S rows
        macs += projections + 2 * length * source * embed_dim
    return 2 * macs


def encoder_layer_flops(lengths: Sequence[int], embed_dim: int, ffn_dim: int) -> int:
    """Self-attention (as ``multi_head_attention_flops``) + the two FFN linears, per sequence."""
    ffn = sum(2 * 2 * length * embed_dim * ffn_dim for length in lengths)
    return multi_head_attention_flops(lengths, lengths, embed_dim) + ffn


def sequence_lengths(tensor: Any) -> list[int]:
    """Length (dim -2) of every sequence in a ``(..., L, E)`` tensor or a nested tensor of ``(L_i, E)``."""
    if getattr(tensor, "is_nested", False):
        return [int(row[0]) for row in tensor._nested_tensor_size().tolist()]
    shape = tuple(tensor.shape)
    return [shape[-2]] * math.prod(shape[:-2])


# --- raw formulas (called with the op's real arguments) ------------------------------------------------


def _native_multi_head_attention(query, key, value, embed_dim, num_head, *args, out_val=None, **kwargs) -> int:
    return multi_head_attention_flops(sequence_lengths(query), sequence_lengths(key), int(embed_dim))


def _transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                   use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2,
                                   norm_bias_2, ffn_weight_1, *args, out_val=None, **kwargs) -> int:
    return encoder_layer_flops(sequence_lengths(src), int(embed_dim), int(ffn_weight_1.shape[0]))


def _sdpa_cpu(query, key, value, *args, out_val=None, **kwargs) -> int:
    return attention_flops(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return attention_backward_flops(grad_out.shape, query.shape, key.shape, value.shape)


def _mv(matrix, vector, *args, out_val=None, **kwargs) -> int:
    return 2 * math.prod(matrix.shape)


def _addmv(bias, matrix, vector, *args, out_val=None, **kwargs) -> int:
    return 2 * math.prod(matrix.shape)


def _dot(a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.numel()


def _addbmm(bias, batch1, batch2, *args, out_val=None, **kwargs) -> int:
    (batch, rows, inner), columns = batch1.shape, batch2.shape[-1]
    return 2 * batch * rows * inner * columns


def _int_mm(a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _raw(formula: Callable[..., int]) -> Callable[..., int]:
    formula._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
    return formula


_FORMULAS: dict[str, Callable[..., int]] = {
    "_native_multi_head_attention": _native_multi_head_attention,
    "_transformer_encoder_layer_fwd": _transformer_encoder_layer_fwd,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa_cpu,
    "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_cpu_backward,
    "mv": _mv,
    "addmv": _addmv,
    "dot": _dot,
    "vdot": _dot,
    "addbmm": _addbmm,
    "_int_mm": _int_mm,
}

# Ops whose FLOPs are 2 x MACs: PyTorch's own matmul, convolution and attention entries plus ours.
CONTRACTION_OPS = frozenset({
    "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_mm", "aten.convolution",
    "aten._convolution", "aten.cudnn_convolution", "aten.convolution_overrideable", "aten._slow_conv2d_forward",
    "aten.convolution_backward", "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_efficient_attention_backward", "aten._scaled_dot_product_flash_attention_backward",
    "aten._scaled_dot_product_cudnn_attention_backward", "aten._flash_attention_forward",
    "aten._efficient_attention_forward", "aten._flash_attention_backward", "aten._efficient_attention_backward",
    "flex_attention", "flex_attention_backward", *(f"aten.{name}" for name in _FORMULAS),
})


def extra_formulas() -> dict[Any, Callable[..., int]]:
    """``custom_mapping`` for ``FlopCounterMode``: our formulas for the ops this torch build has."""
    import torch
    from torch.utils.flop_counter import flop_registry

    mapping = {}
    for name, formula in _FORMULAS.items():
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:  # a newer torch may fix it upstream
            mapping[packet] = _raw(formula)
    return mapping
