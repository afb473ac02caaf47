"""What an ATen op costs under the count convention: counted by a formula, free by nature, elementwise, unknown.

Pure names-and-tags judgements (no torch import): the counter hands over an op's name, whether it is a
view and its tags, and gets an ``OpKind`` back. The lists are explicit so that a reader can see why an
op that ran is not in the totals.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

CONVENTION = (
    "MACs = multiply-accumulates of matmul, linear, convolution and attention (QK^T and AV) ops, counted "
    "at the ATen op level whichever kernel ran; FLOPs = 2 x MACs for those ops, other ops per PyTorch's "
    "flop_counter formula registry (torch.utils.flop_counter). Elementwise, normalisation, pooling, "
    "reduction and optimizer-update ops are O(elements), have no formula and are listed as uncounted "
    "(kind 'elementwise'); ops with no formula of any other kind are listed as 'unknown' and warned about."
)

CONVENTION_SHORT = ("MACs of matmul/linear/conv/attention ops at the ATen level, FLOPs = 2 x MACs "
                    "(PyTorch's flop_counter formulas); elementwise ops are not counted (listed under Uncounted ops)")


class OpKind(str, enum.Enum):
    """How an op that ran is treated by the count."""

    COUNTED = "counted"  # a formula in the registry gives its FLOPs
    FREE = "free"  # moves, views, allocates or reads metadata: no arithmetic at all
    ELEMENTWISE = "elementwise"  # O(elements) arithmetic outside the MAC convention (listed, info)
    UNKNOWN = "unknown"  # arithmetic of unknown size: listed and warned about


# Ops that do no arithmetic, grouped by why. Views (``OpOverload.is_view``) are free without being listed.
FREE_OPS: dict[str, frozenset[str]] = {
    "in-place view or metadata change (no data touched)": frozenset({
        "t_", "transpose_", "squeeze_", "unsqueeze_", "as_strided_", "detach_", "resize_", "resize_as_",
        "set_", "_reshape_alias", "_unsafe_view", "_neg_view", "_conj", "resolve_conj", "resolve_neg",
        "_nested_view_from_buffer", "_nested_tensor_size", "_nested_tensor_strides",
        "_nested_tensor_storage_offsets",
    }),
    "copy or layout change (bytes moved, nothing computed)": frozenset({
        "clone", "copy_", "_to_copy", "_copy_from", "_copy_from_and_resize", "contiguous", "lift_fresh",
        "lift_fresh_copy", "detach_copy", "view_copy", "cat", "stack", "repeat", "roll", "flip",
        "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d",
        "replication_pad2d", "replication_pad3d", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
        "native_channel_shuffle", "im2col", "col2im", "_pin_memory", "to_padded_tensor",
        "_nested_tensor_from_mask", "_nested_tensor_from_tensor_list", "_nested_from_padded",
        "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter", "split_with_sizes_copy",
        "unbind_copy", "_unsafe_index", "alias_copy", "permute_copy", "expand_copy", "transpose_copy",
        "t_copy", "squeeze_copy", "unsqueeze_copy", "slice_copy", "select_copy", "_unsafe_view_copy",
    }),
    "lookup or gather (indexing reads, no arithmetic)": frozenset({
        "index", "index_select", "gather", "embedding", "masked_select", "take", "nonzero", "index_put_",
        "index_put", "_index_put_impl_", "scatter", "scatter_",
    }),
    "allocation, constant or random initialisation (not the model's compute)": frozenset({
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like",
        "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full", "fill_", "fill",
        "zero_", "scalar_tensor", "arange", "linspace", "logspace", "eye", "tril_indices", "triu_indices",
        "randn", "rand", "randint", "randperm", "randn_like", "rand_like", "randint_like", "normal_",
        "uniform_", "random_", "_efficientzerotensor", "empty_permuted",
    }),
    "metadata, scalar reads and assertions": frozenset({
        "_local_scalar_dense", "equal", "is_nonzero", "is_same_size", "_assert_async",
        "_assert_tensor_metadata", "_functional_assert_async", "_functional_sym_constrain_range",
        "sym_constrain_range", "record_stream", "_has_compatible_shallow_copy_type", "is_pinned",
        "_version", "device", "layout", "_assert_scalar", "_print", "_make_dep_token",
        "_nested_tensor_from_mask_left_aligned",
    }),
}

# Arithmetic without multiply-accumulates, O(elements): outside the MAC convention but never hidden.
# Ops tagged ``pointwise`` or ``reduction`` belong here too; these name fragments catch the untagged rest.
ELEMENTWISE_FRAGMENTS = (
    "norm",  # layer/batch/group/instance norm and their backwards
    "softmax", "pool", "dropout", "bernoulli", "loss", "upsample", "grid_sampler", "interpolate",
    "cumsum", "cumprod", "logsumexp", "embedding_dense_backward", "embedding_backward", "_embedding_bag",
    "_foreach_", "_fused_adam", "_fused_sgd", "_fused_adagrad", "masked_fill", "masked_scatter", "where",
    "clamp", "index_add", "scatter_add", "scatter_reduce", "index_reduce", "tril", "triu", "_amp_",
    "threshold", "hardtanh", "glu", "prelu", "rrelu", "celu", "selu", "mish", "silu", "gelu",
)

# Whole namespaces that never compute: profiler markers (the ``record_function`` ranges torch.optim opens).
FREE_NAMESPACES = {"profiler": "profiler range markers (record_function), not computation"}

_BACKWARD_SUFFIXES = ("_backward_data", "_backward_input", "_backward_weight", "_backward")

FREE_NAMES = frozenset().union(*FREE_OPS.values())


def short_name(op: str) -> str:
    """``aten.relu_`` -> ``relu_``; names of other namespaces (``mylib.op``) keep their namespace."""
    return op[len("aten."):] if op.startswith("aten.") else op


def classify_op(op: str, *, counted: bool, is_view: bool, tags: Iterable[str] = ()) -> OpKind:
    """The kind of ``op`` (e.g. ``aten.relu``): ``tags`` are ``torch.Tag`` names such as ``pointwise``."""
    if counted:
        return OpKind.COUNTED
    if op.partition(".")[0] in FREE_NAMESPACES:
        return OpKind.FREE
    if not op.startswith("aten.") and not op.startswith("prim."):
        return OpKind.UNKNOWN  # a custom op (torch.library) or a Triton kernel: nobody knows its cost
    name = short_name(op)
    if is_view or name in FREE_NAMES or name.removeprefix("prim.") in FREE_NAMES:
        return OpKind.FREE
    tag_set = {str(tag).removeprefix("Tag.") for tag in tags}
    if tag_set & {"pointwise", "reduction"} or _is_elementwise_name(name):
        return OpKind.ELEMENTWISE
    return OpKind.UNKNOWN


def _is_elementwise_name(name: str) -> bool:
    base = name.rstrip("_")
    for suffix in _BACKWARD_SUFFIXES:
        base = base.removesuffix(suffix)
    return any(fragment in name or fragment in base for fragment in ELEMENTWISE_FRAGMENTS)


def free_reason(op: str) -> str | None:
    """Why an explicitly listed op is free (views are free by their schema and have no entry)."""
    namespace = op.partition(".")[0]
    if namespace in FREE_NAMESPACES:
        return FREE_NAMESPACES[namespace]
    name = short_name(op)
    return next((reason for reason, names in FREE_OPS.items() if name in names), None)
