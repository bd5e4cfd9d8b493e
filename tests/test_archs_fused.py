"""The fast paths of JDNet against the straightforward (reference) computation."""
import contextlib

import pytest
import torch

from jdnet_plugin.archs import JDNet
from jdnet_plugin.archs.jdnet_arch import DenseChain
from jdnet_plugin.ops import native
from jdnet_plugin.ops.fused import compose_nearest, nearest_composes, nearest_index, position_conv, sam_attention_banded
from jdnet_plugin.registry import create_model, list_models

TINY = dict(units=2, scales=2)
# Every preset (small), and channel counts that are no multiple of 8 (one and three weight maps).
MODELS = [(name, {}) for name in list_models()] + [("jdnet-lite", {"channels": 6}), ("jdnet", {"channels": 10})]
IDS = [name + "".join(f"-{k}{v}" for k, v in over.items()) for name, over in MODELS]


def _model(name: str, seed: int = 0, **overrides) -> JDNet:
    torch.manual_seed(seed)
    m = create_model(name, **{**TINY, **overrides})
    for mod in m.modules():  # non-trivial BatchNorm statistics, so eval mode is really tested
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.3, 0.3)
    return m


@pytest.fixture(params=["native", "pytorch"])
def attention_kernel(request, monkeypatch) -> str:
    """The fast path with the native kernels (where they build) and with its PyTorch fallback."""
    if request.param == "pytorch":
        monkeypatch.setitem(native._state, "lib", None)
    elif not native.available():
        pytest.skip("native kernels unavailable (no C compiler, or JDNET_NATIVE=0)")
    return request.param


def _rain(m: JDNet, x: torch.Tensor, impl: str) -> torch.Tensor:
    m.set_attention_impl(impl)
    with torch.no_grad():
        return m.rain_layer(x)


@pytest.mark.parametrize("name, over", MODELS, ids=IDS)
@pytest.mark.parametrize("size", [(9, 13), (16, 16), (7, 4)])
def test_fast_forward_equals_reference(name, over, size, attention_kernel):
    m = _model(name, **over).eval()
    if min(size) < m.min_size:
        pytest.skip("below the attention window")
    x = torch.rand(2, 3, *size)
    ref, fast = _rain(m, x, "reference"), _rain(m, x, "fast")
    assert ref.abs().max() > 1e-3  # a non-trivial output
    assert (fast - ref).abs().max() <= 1e-4
    assert fast.is_contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(m(x), x - fast, rtol=0, atol=1e-6)


def test_fast_forward_paper_width_and_four_scales(attention_kernel):
    # The paper's channel layout (rel 2, mid 8) and the full scale pyramid, where the nearest
    # upsampling maps compose for some levels of 37x50 and not for others.
    m = _model("jdnet", units=1, scales=4).eval()
    x = torch.rand(1, 3, 37, 50)
    assert (_rain(m, x, "fast") - _rain(m, x, "reference")).abs().max() <= 1e-4


def test_fused_path_in_eval_mode_only(attention_kernel):
    m = _model("jdnet-lite").train()
    x = torch.rand(2, 3, 12, 16)
    with torch.no_grad():
        assert not m.uses_fused_path(x)  # train mode: the modules, with batch statistics
        train = m.rain_layer(x)
    assert (train - _rain(m, x, "reference")).abs().max() <= 1e-4
    m.eval()
    assert (_rain(m, x, "fast") - train).abs().max() > 1e-3  # running statistics differ from the batch's


def test_fused_path_of_batch_norms_without_running_statistics():
    m = _model("jdnet-lite")
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.track_running_stats, mod.running_mean, mod.running_var = False, None, None
    m.eval()
    x = torch.rand(2, 3, 12, 16)
    assert (_rain(m, x, "fast") - _rain(m, x, "reference")).abs().max() <= 1e-4


@pytest.mark.parametrize("units", [7, 11])
def test_blocked_dense_fusion_equals_reference(units):
    # 8 channels: 7 units share fusion GEMMs in blocks of 2, 11 units in blocks of 3; both end on a
    # shorter block
    m = _model("jdnet-no-sa", units=units, scales=1, channels=8).eval()
    assert DenseChain.fusion_block(8, units) > 1
    x = torch.rand(1, 3, 11, 14)
    assert (_rain(m, x, "fast") - _rain(m, x, "reference")).abs().max() <= 1e-4


def test_nearest_composition_detects_both_cases():
    assert compose_nearest(nearest_index(8, 16, "cpu"), nearest_index(4, 16, "cpu"), 8) is not None
    assert compose_nearest(nearest_index(5, 9, "cpu"), nearest_index(3, 9, "cpu"), 5) is None
    assert nearest_composes(4, 8, 16) and nearest_composes(2, 8, 64)
    assert not nearest_composes(3, 5, 9) and not nearest_composes(2, 3, 5)


@pytest.mark.parametrize("band", [1, 13, 50, 10_000])
def test_banded_attention_is_independent_of_band_size(band, monkeypatch):
    monkeypatch.setitem(native._state, "lib", None)  # the PyTorch fallback is the banded one
    torch.manual_seed(band)
    x1, x2 = torch.randn(2, 2, 2, 10, 13).unbind(0)
    x3, pos = torch.randn(2, 8, 10, 13), torch.randn(1, 2, 10, 13)
    wt = torch.randn(2, 4)
    one = sam_attention_banded(x1, x2, x3, pos, wt, 7, band_pixels=10 * 13)
    torch.testing.assert_close(sam_attention_banded(x1, x2, x3, pos, wt, 7, band_pixels=band), one)


@pytest.mark.parametrize("size", [(9, 13), (16, 16)], ids=["pyramid-not-nested", "pyramid-nested"])
@pytest.mark.parametrize("name, over", MODELS, ids=IDS)
def test_fast_gradients_equal_reference(name, over, size):
    """At 16x16 the scale fusion sums its pyramid coarse to fine; at 9x13 (5x7, 3x4, 2x2) each scale at full size."""
    x = torch.rand(2, 3, *size)
    grads, outs = {}, {}
    for impl in ("reference", "fast"):
        m = _model(name, **over).train().set_attention_impl(impl)
        out = m(x)
        (out ** 2).mean().backward()
        outs[impl] = out.detach()
        grads[impl] = {k: p.grad for k, p in m.named_parameters()}
    assert (outs["fast"] - outs["reference"]).abs().max() <= 1e-4
    # Within 1e-4 of each parameter's gradient (its norm); some are zero up to rounding (a bias before a
    # softmax or a batch-statistics BatchNorm), measured against a thousandth of the largest instead.
    assert all(g is not None for g in [*grads["fast"].values(), *grads["reference"].values()])
    floor = 1e-3 * max(g.norm() for g in grads["reference"].values())
    for k, g in grads["reference"].items():
        assert (grads["fast"][k] - g).norm() <= 1e-4 * max(g.norm(), floor), k


def test_fast_path_follows_weight_changes():
    m = _model("jdnet-lite").eval()
    x = torch.rand(1, 3, 9, 13)
    before = _rain(m, x, "fast")
    # an optimiser step changes the weights in place
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(x).abs().mean().backward()
    opt.step()
    m.eval()
    after, ref = _rain(m, x, "fast"), _rain(m, x, "reference")
    assert (after - before).abs().max() > 1e-4
    assert (after - ref).abs().max() <= 1e-4
    # and so does load_state_dict
    other = _model("jdnet-lite", seed=1).eval()
    m.load_state_dict(other.state_dict())
    assert (_rain(m, x, "fast") - _rain(other, x, "reference")).abs().max() <= 1e-4


def test_fused_path_is_switched_by_eval_mode_where_autograd_does_not_record():
    m = _model("jdnet-lite").eval()
    x = torch.rand(1, 3, 9, 13)
    assert not m.uses_fused_path(x) and m(x).requires_grad  # parameters that want gradients: the modules
    with torch.no_grad():
        assert m.uses_fused_path(x)
        assert not m.train().uses_fused_path(x)
        assert not m.eval().set_attention_impl("reference").uses_fused_path(x)
    m.set_attention_impl("fast").requires_grad_(False)
    assert m.uses_fused_path(x)  # frozen weights, no gradient wanted
    assert not m.uses_fused_path(x.requires_grad_())


def test_bf16_autocast_on_cpu_is_close():
    m = _model("jdnet-lite").eval()
    x = torch.rand(2, 3, 12, 17)
    with torch.inference_mode():
        ref = m(x)
        m.optimize_for_inference(dtype=torch.bfloat16)
        out = m(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert (out - ref).abs().max() < 0.05
    assert (out - ref).abs().max() > 0  # it really ran in bfloat16
    # state_dict is unchanged by the channels_last weights
    assert all(v.shape == w.shape for v, w in zip(m.state_dict().values(), _model("jdnet-lite").state_dict().values()))


def _bf16_gemm_reads_past_its_columns() -> bool:
    """Whether this machine's bf16 CPU GEMM reads past a column-prefix view (torch 2.14 on AVX-512 / AMX)."""
    a = torch.full((64, 112), float("nan"), dtype=torch.bfloat16)
    a[:, :80] = 1
    return bool(torch.mm(a[:, :80], torch.ones(16, 80, dtype=torch.bfloat16).t()).isnan().any())


@contextlib.contextmanager
def _nan_filled_uninitialised_memory():
    """``torch.empty`` filled with NaN (deterministic mode); the previous settings restored after."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


@pytest.mark.skipif(not _bf16_gemm_reads_past_its_columns(),
                    reason="this CPU's bf16 GEMM stays within its columns: nothing to guard against here")
def test_bf16_autocast_never_reads_uninitialised_memory():
    # torch's bf16 CPU GEMM reads past the dense buffer's column prefixes (width 80 of 112 here, jdnet-lite's
    # fusion 3); with NaN in the unwritten columns the whole output was NaN.
    torch.manual_seed(0)
    m = create_model("jdnet-lite").eval().optimize_for_inference(dtype=torch.bfloat16)  # the preset's 6 units
    x = torch.rand(1, 3, 64, 64)
    with _nan_filled_uninitialised_memory(), torch.inference_mode():
        out = m(x)
    assert torch.isfinite(out).all()
    with torch.inference_mode():
        ref = m.optimize_for_inference(dtype=torch.float32)(x)
    assert (out - ref).abs().max() < 0.05


def test_optimize_for_inference_rejects_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        _model("jdnet-lite").optimize_for_inference(dtype=torch.int8)


def test_fast_rain_layer_keeps_channels_last_input_layout():
    m = _model("jdnet-lite").eval()
    x = torch.rand(2, 3, 9, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = m.rain_layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_position_conv_equals_the_module():
    from jdnet_plugin.ops import position
    conv = torch.nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(position_conv(conv, 7, 11), conv(position(7, 11)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name, over", MODELS, ids=IDS)
def test_fused_path_and_gradients_on_cuda(name, over):
    m = _model(name, **over).cuda().eval()
    x = torch.rand(2, 3, 19, 23, device="cuda")
    assert (_rain(m, x, "fast") - _rain(m, x, "reference")).abs().max() <= 1e-4
    grads = {}
    for impl in ("reference", "fast"):
        m.zero_grad(set_to_none=True)
        m.train().set_attention_impl(impl)(x).square().mean().backward()
        grads[impl] = {k: p.grad.clone() for k, p in m.named_parameters()}
    floor = 1e-3 * max(g.norm() for g in grads["reference"].values())
    for k, g in grads["reference"].items():
        assert (grads["fast"][k] - g).norm() <= 1e-4 * max(g.norm(), floor), k
