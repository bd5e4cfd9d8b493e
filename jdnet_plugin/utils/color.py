"""Luma: the one place that knows the weights of R, G and B in brightness."""
from __future__ import annotations

import torch

__all__ = ["LUMA", "luma"]

LUMA = (0.299, 0.587, 0.114)  # BT.601, as OpenCV's RGB2GRAY


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB ``(..., 3, H, W)``: ``(..., 1, H, W)``, in the input's dtype and scale."""
    weights = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return (rgb * weights).sum(-3, keepdim=True)
