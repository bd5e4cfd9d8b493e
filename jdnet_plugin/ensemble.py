"""Test-time self-ensemble: the derainer run on mirrored copies of the input, each output mirrored back, the
outputs averaged (BasicSR's ``test_selfensemble``, EDSR's "+"). Only mirrorings: a mirrored streak is still
falling rain, and the training rain is drawn at mirrored angles alike, while a transposition would turn rain
sideways. ``"h"`` (input and its left-right mirror) costs two passes, ``"hv"`` (also upside down) four."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FLIPS", "flip_ensemble", "FlipEnsemble"]

# The dimensions each pass mirrors (of an (..., H, W) tensor); () is the input as it is.
FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {"h": ((), (-1,)), "hv": ((), (-1,), (-2,), (-2, -1))}


def _passes(flips: str) -> tuple[tuple[int, ...], ...]:
    if flips not in FLIPS:
        raise ValueError(f"unknown self-ensemble {flips!r}; choose one of {', '.join(FLIPS)}")
    return FLIPS[flips]


def flip_ensemble(model: nn.Module, x: torch.Tensor, flips: str = "h") -> torch.Tensor:
    """Mean of ``model`` on ``x`` ``(B, C, H, W)`` and on its mirrorings, each output mirrored back."""
    passes = _passes(flips)
    out = None
    for dims in passes:
        y = model(x.flip(dims)).flip(dims) if dims else model(x)
        out = y if out is None else out + y
    return out / len(passes)


class FlipEnsemble(nn.Module):
    """:func:`flip_ensemble` as a module wrapping a derainer; it passes for the derainer wherever one is taken
    (``model=`` of the integrations, :func:`jdnet_plugin.inference.derain_tensor`), with its size constraints.

    >>> import jdnet_plugin
    >>> model = FlipEnsemble(jdnet_plugin.create_model("jdnet-lite"), "h")
    """

    def __init__(self, model: nn.Module, flips: str = "h") -> None:
        super().__init__()
        _passes(flips)
        self.model, self.flips = model, flips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_ensemble(self.model, x, self.flips)

    # The wrapped derainer's size constraints, read by derain_tensor (the passes run one after another, so the
    # memory per pixel is the derainer's).
    @property
    def min_size(self) -> int:
        return int(getattr(self.model, "min_size", 1))

    @property
    def tile_align(self) -> int:
        return int(getattr(self.model, "tile_align", 1))

    @property
    def inference_bytes_per_pixel(self) -> int | None:
        return getattr(self.model, "inference_bytes_per_pixel", None)
