"""The fused operations of :mod:`jdnet_plugin.ops.fused` that the training path uses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jdnet_plugin.ops.fused import Conv1x1, conv1x1, conv2d_post, dense_1x1


@pytest.mark.parametrize("bias", [True, False])
def test_dense_1x1_is_a_1x1_convolution_of_the_concatenation_forward_and_backward(bias):
    g = torch.Generator().manual_seed(0)
    b, h, w, channels, out = 2, 5, 7, (3, 4, 2), 6
    feats = [torch.randn(b, c, h, w, dtype=torch.float64, generator=g, requires_grad=True) for c in channels]
    weight = torch.randn(out, sum(channels), 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    bias_t = torch.randn(out, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    grad = torch.randn(b, out, h, w, dtype=torch.float64, generator=g)

    ref = F.conv2d(torch.cat(feats, 1), weight, bias_t)
    ref_grads = torch.autograd.grad(ref, [*feats, weight] + ([bias_t] if bias else []), grad)
    flat = [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats]
    got = dense_1x1(flat, weight, bias_t).view(b, h, w, out).permute(0, 3, 1, 2)
    got_grads = torch.autograd.grad(got, [*feats, weight] + ([bias_t] if bias else []), grad)
    torch.testing.assert_close(got, ref)
    for a, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, r)


def test_dense_1x1_names_a_weight_that_does_not_fit():
    with pytest.raises(ValueError, match="6 input channels"):
        dense_1x1([torch.zeros(4, 3), torch.zeros(4, 2)], torch.zeros(1, 6))


@pytest.mark.parametrize("bias", [True, False])
def test_dense_1x1_under_bf16_autocast_matches_the_convolution(bias):
    """Autocast casts out-of-place ops only: the in-place accumulation must not meet bf16 products."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(70, c, generator=g, requires_grad=True) for c in (8, 8, 8)]
    weight = torch.randn(8, 24, generator=g, requires_grad=True)
    bias_t = torch.randn(8, generator=g, requires_grad=True) if bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dense_1x1(feats, weight, bias_t)
        ref = F.linear(torch.cat(feats, 1), weight, bias_t)
    got.float().sum().backward()
    torch.testing.assert_close(got.float(), ref.float(), rtol=0.05, atol=0.1)
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "weight slice"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_is_the_convolution_forward_and_backward(layout, bias):
    """NCHW float32 on CPU is a batched GEMM, channels_last one GEMM over its storage (channels_last out); both are
    the convolution."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 9, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    wide = torch.randn(4, 8, generator=g, requires_grad=True)
    weight = wide[:, 2:7] if layout == "weight slice" else wide[:, :5]
    bias_t = torch.randn(4, generator=g, requires_grad=True) if bias else None
    params = [x, wide] + ([bias_t] if bias else [])
    grad = torch.randn(3, 4, 7, 9, generator=g)
    got = conv1x1(x, weight, bias_t)
    ref = F.conv2d(x, weight[..., None, None], bias_t)
    torch.testing.assert_close(got, ref)
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    for u, v in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(u, v)


def test_conv1x1_names_a_weight_that_does_not_fit():
    with pytest.raises(ValueError, match="6 input channels for an input of 5"):
        conv1x1(torch.zeros(1, 5, 2, 2), torch.zeros(3, 6))


def test_conv1x1_module_is_a_conv2d_with_its_state_dict():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, 1)
    module = Conv1x1(6, 3)
    module.load_state_dict(conv.state_dict())
    assert isinstance(module, torch.nn.Conv2d) and module.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(module(x), conv(x))
    assert Conv1x1(6, 3, bias=False).bias is None


def test_conv1x1_leaves_tensors_contiguous_in_both_layouts_to_onednn():
    """A channels_last feature of 1x1 pixels (the coarsest scale of a small tile) is also NCHW-contiguous: the
    inference path keeps oneDNN's numerics for it."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, generator=g)
    with torch.no_grad():
        assert torch.equal(conv1x1(x, w), conv2d_post(x, w[..., None, None], None))


def test_conv1x1_module_takes_an_unbatched_input_as_conv2d_does():
    torch.manual_seed(0)
    module = Conv1x1(4, 3)
    x = torch.randn(4, 5, 6)
    torch.testing.assert_close(module(x), F.conv2d(x[None], module.weight, module.bias)[0])
