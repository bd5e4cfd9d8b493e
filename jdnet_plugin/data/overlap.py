"""Benchmark leakage check: training images whose top-left crop is a benchmark background.

Rain100L/H (and most Rain* benchmarks) cut their backgrounds as the top-left crop of BSD images; a training
image that holds one has seen the test set. Images are compared as small grey thumbnails, so JPEG
re-encoding does not hide a match.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..io import read_rgb

__all__ = ["benchmark_overlaps"]

_THUMB = (24, 16)  # width, height for landscape crops (transposed for portrait)


def _thumb(rgb: np.ndarray) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    size = _THUMB if w >= h else _THUMB[::-1]
    return cv2.resize(rgb.astype(np.float32).mean(axis=2), size, interpolation=cv2.INTER_AREA)


def benchmark_overlaps(files: Iterable[str | os.PathLike], benchmark: Iterable[str | os.PathLike],
                       tolerance: float = 4.0) -> list[tuple[Path, Path]]:
    """``(training file, benchmark file)`` pairs where the training image's top-left crop of the benchmark
    image's size matches it (mean absolute difference of 8-bit grey thumbnails under ``tolerance``)."""
    by_size: dict[tuple[int, int], list[tuple[Path, np.ndarray]]] = {}
    for b in map(Path, benchmark):
        img = read_rgb(b)
        by_size.setdefault(img.shape[:2], []).append((b, _thumb(img)))
    found = []
    for f in map(Path, files):
        img = read_rgb(f)
        for (h, w), refs in by_size.items():
            if img.shape[0] < h or img.shape[1] < w:
                continue
            t = _thumb(img[:h, :w])
            found += [(f, b) for b, ref in refs if float(np.abs(t - ref).mean()) < tolerance]
    return found
