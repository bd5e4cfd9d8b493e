"""Shared by the integrations: which derainer to use, and how to run it on RGB batches."""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

import jdnet_plugin
from jdnet_plugin.gate import GateSpec, GateStats
from jdnet_plugin.inference import derain_tensor

__all__ = ["resolve_derainer", "derain_batch", "run_derainer", "model_device", "ordinary"]

WeightsSource = str | os.PathLike | Mapping | None


def resolve_derainer(weights: WeightsSource = None, model: nn.Module | None = None,
                     device: str | torch.device | None = None) -> nn.Module:
    """The deraining model: ``model`` as given, else ``jdnet_plugin.load_model(weights or "default")``.

    Nothing is downloaded: a missing file or unshipped default weights raise ``FileNotFoundError`` at once.
    """
    if model is not None and weights is not None:
        raise TypeError("pass either weights= or model=, not both")
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (a JDNet), got {type(model).__name__}")
        return model.to(device) if device is not None else model
    return jdnet_plugin.load_model(jdnet_plugin.DEFAULT_WEIGHTS if weights is None else weights, device=device)


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    t = next(iter(model.parameters()), None)
    return t if t is not None else next(iter(model.buffers()), None)


def model_device(model: nn.Module) -> torch.device:
    t = _first_tensor(model)
    return t.device if t is not None else torch.device("cpu")


def run_derainer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` clamped to [0, 1], with autograd as the caller set it; images smaller than the model's
    minimum size are edge-padded and cropped back."""
    h, w = x.shape[-2:]
    m = int(getattr(model, "min_size", 1))
    if h < m or w < m:
        x = F.pad(x, (0, max(0, m - w), 0, max(0, m - h)), mode="replicate")
    return model(x)[..., :h, :w].clamp(0, 1)


def derain_batch(model: nn.Module, x: torch.Tensor, tile: int | None = None, gate: GateSpec = None,
                 gate_stats: GateStats | None = None) -> torch.Tensor:
    """RGB float ``(B, 3, H, W)`` in [0, 1] -> derained, clamped to [0, 1], float32, on ``x``'s device.

    ``jdnet_plugin.inference.derain_tensor`` (model's device and dtype, inference mode, tiles for big frames),
    handing back an ordinary tensor.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
    return ordinary(derain_tensor(model, x.float(), tile=tile, gate=gate, gate_stats=gate_stats).float())


def ordinary(t: torch.Tensor) -> torch.Tensor:
    """Inference tensors refuse in-place updates and autograd later on: a normal tensor with the same values."""
    return t.clone() if t.is_inference() else t
