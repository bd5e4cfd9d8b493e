"""Paired transforms on ``(H, W, C)`` numpy images: the same random window and flips for rainy and clean.

Each transform takes a ``numpy.random.Generator`` so that a sample's randomness comes from its own seed
(see :mod:`jdnet_plugin.data.datasets`), never from process-global state.
"""
from __future__ import annotations

import numpy as np

__all__ = ["crop_window", "paired_random_crop", "paired_augment", "PairedRandomCrop", "PairedAugment"]


def crop_window(height: int, width: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a uniformly random ``size`` x ``size`` window inside ``height`` x ``width``."""
    if size > height or size > width:
        raise ValueError(f"crop {size}x{size} is bigger than the image ({height}x{width})")
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def paired_random_crop(images: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` x ``size`` window of every image (all of one height and width)."""
    h, w = images[0].shape[:2]
    for img in images[1:]:
        if img.shape[:2] != (h, w):
            raise ValueError(f"paired images differ in size: {images[0].shape[:2]} vs {img.shape[:2]}")
    top, left = crop_window(h, w, size, rng)
    return [img[top:top + size, left:left + size] for img in images]


def paired_augment(images: list[np.ndarray], rng: np.random.Generator, hflip: bool = False, vflip: bool = False,
                   rot90: bool = False) -> list[np.ndarray]:
    """The same random flips / 90-degree rotation of every image (each enabled one drawn with p = 0.5)."""
    # Draw all three every time so that the random stream does not depend on which are enabled.
    flips = rng.random(3) < 0.5
    out = []
    for img in images:
        if hflip and flips[0]:
            img = img[:, ::-1]
        if vflip and flips[1]:
            img = img[::-1]
        if rot90 and flips[2]:
            img = img.transpose(1, 0, 2)
        out.append(img)
    return out


class PairedRandomCrop:
    """:func:`paired_random_crop` as a callable transform."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"crop size must be >= 1, got {size}")
        self.size = int(size)

    def __call__(self, images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return paired_random_crop(images, self.size, rng)

    def __repr__(self) -> str:
        return f"PairedRandomCrop(size={self.size})"


class PairedAugment:
    """:func:`paired_augment` as a callable transform; everything off by default (the authors' setting)."""

    def __init__(self, hflip: bool = False, vflip: bool = False, rot90: bool = False) -> None:
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or self.rot90

    def __call__(self, images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        return paired_augment(images, rng, self.hflip, self.vflip, self.rot90)

    def __repr__(self) -> str:
        return f"PairedAugment(hflip={self.hflip}, vflip={self.vflip}, rot90={self.rot90})"
