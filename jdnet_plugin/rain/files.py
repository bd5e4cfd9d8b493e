"""Rain on the files of a tree: the same rain on the same file whoever adds it (``python -m jdnet_plugin.synth``,
the evaluations in ``eval_tasks``): a per-file seed from the run's seed and the file's relative path."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from .params import resolve_preset
from .synthesis import add_rain, draw_params, make_generator

__all__ = ["file_seed", "parse_scale", "file_rain"]


def file_seed(seed: int, rel: str) -> int:
    """A per-file seed from the run's seed and the file's relative path (order-independent)."""
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def parse_scale(scale: str | float) -> float | str:
    """A streak size factor: a positive number, or ``"auto"`` (shorter image side / 320, Rain100L's)."""
    if scale == "auto":
        return scale
    try:
        value = float(scale)
    except (TypeError, ValueError):
        value = 0.0
    if not value > 0:
        raise ValueError(f"rain scale must be a positive number or 'auto', got {scale!r}")
    return value


def file_rain(preset: str, seed: int, scale: str | float = 1.0) -> Callable[[np.ndarray, str], np.ndarray]:
    """``fn(rgb, relative path)``: the file's RGB uint8 image with ``preset`` rain, seeded by
    :func:`file_seed`, streaks scaled by ``scale``. Unknown presets and bad scales fail here."""
    choice, scale = resolve_preset(preset), parse_scale(scale)

    def fn(rgb: np.ndarray, rel: str) -> np.ndarray:
        g = make_generator(file_seed(seed, rel))
        factor = min(rgb.shape[:2]) / 320.0 if scale == "auto" else scale
        return add_rain(rgb, draw_params(choice, g, factor), generator=g)

    return fn
