"""The rain gate: how much rain an image holds, and which images to derain.

A derainer removes rain from a rainy image and a little texture from a clean one. What it removes from rain
is bright (rain adds light), lies along streaks (structure of one orientation) and falls within 45 degrees
of vertical; what it removes from a clean image is texture of every orientation. :func:`streak_score` measures
the first: the positive luma of the removed layer, weighted per pixel by the coherence of its local structure
tensor and kept where the structure is nearer vertical than horizontal, averaged, in 1/255 of luma.

:func:`jdnet_plugin.inference.rain_score` computes it from the model on a few full-resolution crops (fine
streaks vanish at low resolution), and ``gate=`` (``derain()``, ``derain_tensor()``, the integrations, the
derain CLI) passes images whose score is below a threshold through untouched. ``"auto"`` is
:data:`AUTO_THRESHOLD`, calibrated with ``benchmarks/gate_calibration.py`` on the clean and rainy images of
``../shared`` (the project's own rain and Rain100L's, on COCO128, CamVid and Rain100L's backgrounds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .utils.color import luma

__all__ = ["AUTO_THRESHOLD", "GATE_VERSION", "GATE_CROP", "GATE_CROPS", "GateSpec", "GateStats", "gate_threshold",
           "streak_score", "crop_boxes"]

# benchmarks/gate_calibration.py: the threshold of best balanced accuracy for jdnet-lite.broadrain,
# jdnet-lite.broadrain-s3 and jdnet-lite.broadrain-s8 alike (benchmarks/results/gate/); the README's "Rain gate"
# says what it passes.
AUTO_THRESHOLD = 1.25
GATE_VERSION = 1  # of the score: part of every cache key of gated results; bump when the score changes
GATE_CROP = 128   # side of the square crops the score is computed on, at the image's own resolution
GATE_CROPS = 6    # crops per image, spread over a grid
_WINDOW = 9       # structure tensor window (pixels)

GateSpec = str | float | int | None


def gate_threshold(gate: GateSpec) -> float | None:
    """``None``/``"off"`` -> no gate (``None``); ``"auto"`` -> :data:`AUTO_THRESHOLD`; a number (or its text)
    >= 0 -> that threshold."""
    if gate is None or (isinstance(gate, str) and gate.strip().lower() == "off"):
        return None
    if isinstance(gate, str) and gate.strip().lower() == "auto":
        return AUTO_THRESHOLD
    if isinstance(gate, bool):
        raise ValueError(f"gate must be 'off', 'auto' or a number >= 0, got {gate!r}")
    try:
        value = float(gate)
    except (TypeError, ValueError):
        raise ValueError(f"gate must be 'off', 'auto' or a number >= 0, got {gate!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"gate must be 'off', 'auto' or a number >= 0, got {gate!r}")
    return value


def crop_boxes(h: int, w: int, crop: int = GATE_CROP, n: int = GATE_CROPS) -> list[tuple[int, int, int]]:
    """``(y, x, side)`` of about ``n`` square crops spread evenly over an ``h`` x ``w`` image (more columns
    than rows on a landscape image); one crop of the whole short side when the image is smaller."""
    side = min(crop, h, w)
    rows = 1 if h == side else max(1, round(math.sqrt(n * h / w)))
    cols = 1 if w == side else max(1, math.ceil(n / rows))
    ys = torch.linspace(0, h - side, rows).round().long().tolist() if rows > 1 else [(h - side) // 2]
    xs = torch.linspace(0, w - side, cols).round().long().tolist() if cols > 1 else [(w - side) // 2]
    return [(y, x, side) for y in ys for x in xs]


def _box(t: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(t, (k // 2,) * 4, mode="replicate"), k, 1)


def streak_score(rainy: torch.Tensor, derained: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` pairs in [0, 1] -> ``(N,)``: the streak-shaped light the derainer removed (module
    docstring), in 1/255 of luma."""
    rain = luma(rainy - derained).clamp_(min=0)
    if min(rain.shape[-2:]) < 3:
        return rain.flatten(1).mean(1) * 255
    gx = (rain[..., 1:-1, 2:] - rain[..., 1:-1, :-2])
    gy = (rain[..., 2:, 1:-1] - rain[..., :-2, 1:-1])
    jxx, jyy, jxy = _box(gx * gx, _WINDOW), _box(gy * gy, _WINDOW), _box(gx * gy, _WINDOW)
    coherence = ((jxx - jyy) ** 2 + 4 * jxy ** 2).sqrt() / (jxx + jyy + 1e-8)
    near_vertical = jxx > jyy  # gradients mostly across x: the streak runs mostly along y
    return (rain[..., 1:-1, 1:-1] * coherence * near_vertical).flatten(1).mean(1) * 255


@dataclass
class GateStats:
    """How many images (or frames) a gate sent to the derainer and how many it passed through."""

    derained: int = 0
    passed: int = 0
    last: list[bool] = field(default_factory=list, repr=False, compare=False)  # the latest batch's decisions, per image

    def update(self, derain_mask: torch.Tensor) -> None:
        self.last = [bool(v) for v in derain_mask.flatten().tolist()]
        n = sum(self.last)
        self.derained += n
        self.passed += len(self.last) - n

    @property
    def total(self) -> int:
        return self.derained + self.passed

    def __str__(self) -> str:
        return f"{self.derained} of {self.total} derained, {self.passed} passed through by the rain gate"
