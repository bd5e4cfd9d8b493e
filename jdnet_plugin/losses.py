"""Training losses of the JDNet paper: negative SSIM (the authors' default), L1 and MSE.

The SSIM loss is the authors' definition: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, on RGB in
[0, 1] with zero padding, mean over the map; that is :func:`jdnet_plugin.metrics.ssim` with
``convention="rgb"`` (unquantised, differentiable), so ``loss = -ssim``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import ssim

__all__ = ["LOSSES", "ssim_loss", "l1_loss", "mse_loss", "SSIMLoss", "L1Loss", "MSELoss", "build_loss"]


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-SSIM`` (the authors' RGB definition), averaged over the batch; in [-1, 1], -1 for identical images."""
    # SSIM in float32 even under autocast: its variance terms are differences of small numbers.
    with torch.autocast(pred.device.type, enabled=False):
        return -ssim(pred.float(), target.float(), convention="rgb", quantize=False).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the paper's "L1" ablation)."""
    return F.l1_loss(pred, target)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (the paper's "L2" ablation)."""
    return F.mse_loss(pred, target)


class SSIMLoss(nn.Module):
    """:func:`ssim_loss` as a module."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim_loss(pred, target)


class L1Loss(nn.Module):
    """:func:`l1_loss` as a module."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return l1_loss(pred, target)


class MSELoss(nn.Module):
    """:func:`mse_loss` as a module."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_loss(pred, target)


LOSSES: dict[str, type[nn.Module]] = {"ssim": SSIMLoss, "l1": L1Loss, "mse": MSELoss}
LOSS_ALIASES = {"l2": "mse", "mae": "l1"}
LOSS_NAMES = (*LOSSES, *LOSS_ALIASES)  # what a training config may name


def build_loss(name: str) -> nn.Module:
    """The loss module of a name: ``"ssim"`` (negative SSIM), ``"l1"`` or ``"mse"`` (``"l2"`` is an alias)."""
    key = LOSS_ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[key]()
