"""Counts of the fixture models against numbers derived by hand (see each model's docstring)."""

import pytest
import torch
from fixtures import count_models as models
from torch import nn
from torch.utils.flop_counter import register_flop_formula

import torchdoctor
import torchdoctor.count
from torchdoctor.count import count

B, L, E = 2, 10, 32


def attention_macs(batch: int, length: int, embed: int) -> int:
    """Q, K, V and output projections (4 L E^2) + QK^T and AV (2 L^2 E), per sequence."""
    return batch * (4 * length * embed * embed + 2 * length * length * embed)


def macs_of(model, inputs, **options) -> int:
    return count(model, inputs, **options).result["macs"]


def test_conv_is_cout_cin_k2_hout_wout():
    report = count(models.ConvNet(), torch.randn(1, 3, 16, 16))
    assert report.result["macs"] == 8 * 3 * 3 * 3 * 16 * 16
    assert report.result["flops"] == 2 * report.result["macs"]
    assert report.result["params"]["total"] == 8 * 3 * 9 + 8
    assert report.command == "count" and report.exit_code() == 0


def test_linear_is_in_times_out_times_batch():
    report = count(models.LinearStack(), torch.randn(4, 16))
    assert report.result["macs"] == 4 * (16 * 32 + 32 * 8)
    rows = {row["name"]: row for row in report.result["layers"]}
    assert rows["fc1"]["macs"] == 4 * 16 * 32 and rows["fc1"]["output_shape"] == [4, 32]
    assert rows["fc2"]["share"] == pytest.approx(256 / 768, abs=1e-5)
    assert rows["fc1"]["params"] == 16 * 32 + 32


def test_hand_written_attention_counts_both_matmuls():
    assert macs_of(models.HandAttention(), torch.randn(B, L, E)) == attention_macs(B, L, E)


def test_sdpa_counts_the_same_as_the_hand_version():
    # On CPU F.scaled_dot_product_attention runs aten._scaled_dot_product_flash_attention_for_cpu, which
    # PyTorch's registry lacks (FlopCounterMode counts it as zero); our formula fills the gap.
    report = count(models.SdpaAttention(), torch.randn(B, L, E))
    assert report.result["macs"] == attention_macs(B, L, E)
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in {row["op"] for row in report.result["by_op"]}


def test_multihead_attention_fast_path_equals_the_unfused_train_mode_count():
    model, x = models.MhaBlock(), torch.randn(B, L, E)
    fused = count(model, x)
    assert "aten._native_multi_head_attention" in {row["op"] for row in fused.result["by_op"]}
    unfused = count(model, x, train_step=True).result["phases"]["forward"]["macs"]  # train mode, grad on
    assert fused.result["macs"] == unfused == attention_macs(B, L, E)
    assert model.training  # the caller's mode is restored
    assert count(model, x, meta=True).result["macs"] == attention_macs(B, L, E)  # meta takes the slow path


def test_transformer_encoder_layer_fast_path_counts_attention_and_ffn():
    model, x = models.EncoderStack(), torch.randn(B, L, E)
    fused = count(model, x)
    assert "aten._transformer_encoder_layer_fwd" in {row["op"] for row in fused.result["by_op"]}
    per_layer = attention_macs(B, L, E) + B * 2 * L * E * 64
    assert fused.result["macs"] == 2 * per_layer
    assert count(model, x, train_step=True).result["phases"]["forward"]["macs"] == 2 * per_layer


def test_functional_matmul_and_einsum_are_counted():
    assert macs_of(models.FunctionalMatmul(), torch.randn(2, 8)) == 2 * 8 * 8 + 2 * 8 * 4


def test_tied_embedding_and_head_counted_once_and_listed():
    report = count(models.TiedLM(), torch.randint(0, 100, (2, 5)))
    params = report.result["params"]
    assert params["total"] == 100 * 16 + 100
    assert params["shared"] == [{"names": ["embed.weight", "head.weight"], "numel": 1600}]
    assert report.result["macs"] == 2 * 5 * 16 * 100


def test_frozen_parameters_and_buffers():
    params = count(models.FrozenBackbone(), torch.randn(2, 3, 8, 8)).result["params"]
    assert (params["total"], params["trainable"], params["frozen"]) == (130, 10, 120)
    assert params["buffers"] == 9 and params["buffer_bytes"] == 4 * 4 + 4 * 4 + 8


def test_bytes_by_dtype_and_dtype_option():
    params = count(models.HalfHead(), torch.randn(2, 8)).result["params"]
    assert params["bytes_by_dtype"] == {"float16": (8 * 4 + 4) * 2, "float32": (8 * 8 + 8) * 4}
    report = count(models.LinearStack(), torch.randn(4, 16), dtype="bf16")
    assert report.result["params"]["bytes_by_dtype"] == {"bfloat16": (16 * 32 + 32 + 32 * 8 + 8) * 2}
    assert report.result["inputs"][0]["dtype"] == "bfloat16" and report.result["macs"] == 4 * 768


def test_inputs_from_shapes_and_inferred_from_the_first_layer():
    model = models.LinearStack()
    assert count(model, input_shapes=[(3, 16)]).result["macs"] == 3 * 768
    inferred = count(model)  # torchdoctor.examples.example_inputs: (2, in_features)
    assert inferred.result["inputs"][0]["shape"] == [2, 16] and inferred.result["macs"] == 2 * 768
    ids = count(models.TiedLM(), input_shapes=[(1, 7)]).result["inputs"][0]
    assert ids["dtype"] == "int64" and ids["shape"] == [1, 7]


def test_dict_inputs_are_keyword_arguments():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, *, x):
            return self.fc(x)

    report = count(Keyword(), {"x": torch.randn(3, 4)})
    assert report.result["macs"] == 3 * 16 and report.result["inputs"][0]["name"] == "x"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_compiled_module_is_counted_through_its_original():
    compiled = torch.compile(models.LinearStack())
    report = count(compiled, torch.randn(4, 16))
    assert report.result["macs"] == 4 * 768 and report.result["model"] == "LinearStack"


def test_torchdoctor_count_is_callable_like_the_function():
    report = torchdoctor.count(models.ConvNet(), torch.randn(1, 3, 16, 16))
    assert report.result["macs"] == 55296
    assert torchdoctor.count.count is count


def test_caller_model_is_left_as_it_was():
    model = models.FrozenBackbone().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count(model, torch.randn(2, 3, 8, 8), dtype="float16")
    count(model, torch.randn(2, 3, 8, 8), train_step=True)
    count(model, torch.randn(2, 3, 8, 8), meta=True)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    from torch.nn.modules import module as module_hooks

    assert not module_hooks._global_forward_hooks and not module_hooks._global_forward_pre_hooks


@torch.library.custom_op("torchdoctor_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


def test_ops_without_a_formula_are_reported_not_silently_zero():
    report = count(models.SpectralMix(), torch.randn(2, 16))
    warning = next(f for f in report.findings if f.severity.value == "warning")
    assert warning.id == "uncounted-ops" and "aten._fft_r2c x1" in warning.message
    assert {"op": "aten._fft_r2c", "calls": 1, "kind": "unknown"} in report.result["uncounted_ops"]
    assert report.result["macs"] == 2 * 16 * 16 and report.exit_code(strict=True) == 1

    class Custom(nn.Module):
        def forward(self, x):
            return mystery(mystery(x))

    custom = count(Custom(), torch.randn(3))
    assert {"op": "torchdoctor_test.mystery", "calls": 2, "kind": "unknown"} in custom.result["uncounted_ops"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attention_kernels_count_the_same():
    # On CUDA, SDPA takes the flash/efficient kernels and MultiheadAttention its CUDA fast path.
    x = torch.randn(B, L, E, device="cuda")
    for model in (models.HandAttention(), models.SdpaAttention(), models.MhaBlock()):
        assert macs_of(model.cuda(), x) == attention_macs(B, L, E)
    assert macs_of(models.EncoderStack().cuda(), x) == 2 * (attention_macs(B, L, E) + B * 2 * L * E * 64)


@torch.library.custom_op("torchdoctor_test::costly", mutates_args=())
def costly(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@costly.register_fake
def _(x):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.torchdoctor_test.costly)
def _costly_flops(x_shape, out_shape=None, **kwargs) -> int:
    return 10 * x_shape[0]


def test_formulas_registered_with_pytorch_count_as_flops_not_macs():
    class UsesCostly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return costly(self.fc(x))

    report = count(UsesCostly(), torch.randn(3, 4))
    assert report.result["macs"] == 3 * 16 and report.result["flops"] == 2 * 3 * 16 + 30
    assert {"op": "torchdoctor_test.costly", "calls": 1, "macs": 0, "flops": 30} in report.result["by_op"]
    assert not [row for row in report.result["uncounted_ops"] if row["kind"] == "unknown"]
