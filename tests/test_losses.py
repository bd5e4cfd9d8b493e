"""Losses: the authors' negative SSIM (checked against their pytorch_ssim formulas), L1, MSE."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jdnet_plugin import create_model
from jdnet_plugin.losses import (
    L1Loss, MSELoss, SSIMLoss, WeightedSum, build_loss, l1_loss, mse_loss, parse_loss, ssim_loss)


def _authors_ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """pytorch_ssim.SSIM (size_average=True), as the JDNet authors' code uses it, written out again."""
    gauss = torch.tensor([math.exp(-(x - window_size // 2) ** 2 / (2 * 1.5**2)) for x in range(window_size)],
                         dtype=torch.float64)
    g = (gauss / gauss.sum()).unsqueeze(1)
    channel = img1.shape[1]
    window = (g @ g.t()).expand(channel, 1, window_size, window_size).contiguous().to(img1.dtype)
    pad = window_size // 2
    mu1 = F.conv2d(img1, window, padding=pad, groups=channel)
    mu2 = F.conv2d(img2, window, padding=pad, groups=channel)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq = F.conv2d(img1 * img1, window, padding=pad, groups=channel) - mu1_sq
    sigma2_sq = F.conv2d(img2 * img2, window, padding=pad, groups=channel) - mu2_sq
    sigma12 = F.conv2d(img1 * img2, window, padding=pad, groups=channel) - mu1_mu2
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.mean()


def test_ssim_loss_is_the_authors_negative_ssim():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 24, 20, generator=g)
    pred = (target + 0.1 * torch.randn(3, 3, 24, 20, generator=g)).clamp(0, 1)
    expected = -_authors_ssim(pred.double(), target.double())
    assert torch.allclose(ssim_loss(pred, target).double(), expected, atol=1e-6)
    assert float(ssim_loss(target, target)) == pytest.approx(-1.0, abs=1e-6)
    assert float(SSIMLoss()(pred, target)) == float(ssim_loss(pred, target))


def test_ssim_loss_is_differentiable_and_float32_under_autocast():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 3, 16, 16, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 16, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ssim_loss(pred, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_l1_mse_and_modules():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    assert torch.equal(l1_loss(a, b), (a - b).abs().mean()) and torch.equal(L1Loss()(a, b), l1_loss(a, b))
    assert torch.allclose(mse_loss(a, b), ((a - b) ** 2).mean()) and torch.equal(MSELoss()(a, b), mse_loss(a, b))


def test_build_loss():
    assert isinstance(build_loss("ssim"), SSIMLoss)
    assert isinstance(build_loss("L1"), L1Loss)
    assert isinstance(build_loss("l2"), MSELoss) and isinstance(build_loss("mse"), MSELoss)
    with pytest.raises(ValueError, match="unknown loss 'huber' in 'huber'; known: ssim, l1, mse"):
        build_loss("huber")


@pytest.mark.parametrize("name", ["ssim", "l1", "mse"])
def test_loss_goes_down_on_a_fixed_batch(name):
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and stable on a busy machine
    torch.manual_seed(0)
    model = create_model("jdnet-lite", units=1, scales=1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 3, 16, 16, generator=g)
    rain = (clean + 0.3 * (torch.rand(2, 3, 16, 16, generator=g) > 0.9)).clamp(0, 1)
    loss_fn = build_loss(name)
    losses = []
    for _ in range(25):
        loss = loss_fn(model(rain), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0] - (-1.0 if name == "ssim" else 0.0))


def test_weighted_sums_of_losses():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    assert isinstance(build_loss("SSIM"), SSIMLoss) and isinstance(build_loss("1*mae"), L1Loss)
    total = build_loss("ssim + 0.5*l1")
    assert isinstance(total, WeightedSum)
    assert torch.allclose(total(a, b), ssim_loss(a, b) + 0.5 * l1_loss(a, b))
    assert parse_loss("ssim+0.5*l1+2*l2") == {"ssim": 1.0, "l1": 0.5, "mse": 2.0}
    for spec, msg in [("ssim+huber", "unknown loss 'huber'"), ("ssim+-1*l1", "positive"),
                      ("ssim+x*l1", "'x' of 'l1' is not a number"), ("l1+mae", "names 'l1' twice"), ("", "a loss is")]:
        with pytest.raises(ValueError, match=msg):
            build_loss(spec)
