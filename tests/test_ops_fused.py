"""The fused operations of :mod:`jdnet_plugin.ops.fused` that the training path uses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jdnet_plugin.ops.fused import dense_1x1


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
