"""Training losses of the JDNet paper: negative SSIM (the authors' default), L1 and MSE, and weighted sums of
them (``"ssim+l1"``, ``"ssim+0.5*l1"``).

The SSIM loss is the authors' definition: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, on RGB in
[0, 1] with zero padding, mean over the map; that is :func:`jdnet_plugin.metrics.ssim` with
``convention="rgb"`` (unquantised, differentiable), so ``loss = -ssim``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import ssim

__all__ = ["LOSSES", "ssim_loss", "l1_loss", "mse_loss", "SSIMLoss", "L1Loss", "MSELoss", "WeightedSum",
           "parse_loss", "build_loss"]


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


class WeightedSum(nn.Module):
    """``sum(weight * loss(pred, target))`` over named terms, e.g. ``{"ssim": 1.0, "l1": 0.5}``."""

    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(terms)
        self.terms = nn.ModuleDict({name: LOSSES[name]() for name in terms})

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * self.terms[name](pred, target) for name, w in self.weights.items())


def parse_loss(spec: str) -> dict[str, float]:
    """The terms of a loss spec, ``"ssim"`` or a sum such as ``"ssim+0.5*l1"``, as ``{name: weight}``.

    Names are case-insensitive and may be aliases (``l2``, ``mae``); a weight is a positive number before ``*``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a loss is a name or a sum of names such as 'ssim+0.5*l1', got {spec!r}")
    terms: dict[str, float] = {}
    for term in spec.replace(" ", "").lower().split("+"):
        weight, _, name = term.rpartition("*")
        key = LOSS_ALIASES.get(name, name)
        if key not in LOSSES:
            raise ValueError(f"unknown loss {name!r} in {spec!r}; known: {', '.join(LOSS_NAMES)}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"loss {spec!r}: weight {weight!r} of {name!r} is not a number") from None
        if not w > 0 or w == float("inf"):
            raise ValueError(f"loss {spec!r}: weight of {name!r} must be a positive number, got {weight}")
        if key in terms:
            raise ValueError(f"loss {spec!r} names {key!r} twice")
        terms[key] = w
    return terms


def build_loss(name: str) -> nn.Module:
    """The loss module of a spec: ``"ssim"`` (negative SSIM), ``"l1"``, ``"mse"`` (``"l2"`` is an alias), or a
    weighted sum of them such as ``"ssim+l1"`` or ``"ssim+0.5*l1"`` (:func:`parse_loss`)."""
    terms = parse_loss(name)
    if len(terms) == 1 and next(iter(terms.values())) == 1.0:
        return LOSSES[next(iter(terms))]()
    return WeightedSum(terms)
