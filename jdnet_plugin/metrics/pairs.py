"""Scoring a paired set: PSNR/SSIM (Y and RGB, ``docs/evaluation.md``) of each rainy/clean pair, derained or not.

The one scorer behind ``python -m jdnet_plugin.evaluate`` and ``eval_tasks/restore.py``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .psnr_ssim import psnr, ssim

__all__ = ["PAIR_METRICS", "PairScores", "image_scores", "paired_dataset", "pair_files", "score_pairs"]

PAIR_METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def image_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The four numbers of one image: ``(3, H, W)`` float tensors in [0, 1] (or uint8 HWC arrays)."""
    return {f"{m}_{c}": float(f(pred, target, convention=c)) for m, f in (("psnr", psnr), ("ssim", ssim))
            for c in ("y", "rgb")}


def paired_dataset(path: str | os.PathLike) -> Dataset:
    """The pairs of a folder, whole images, each file read when its pair is scored (a bad pair fails alone):
    rainy/clean sub-folders, ``rain-*``/``norain-*`` files, or side-by-side images (clean | rainy)."""
    from ..data import DatasetError, PairedImageDataset, SideBySideDataset, detect_format

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    kind = detect_format(path)
    if kind == "paired":
        return PairedImageDataset.from_folder(path, check=False)
    if kind == "side-by-side":
        return SideBySideDataset(path, check=False)
    raise DatasetError(f"{path}: no clean ground truth for the rainy images (expected rain/ + norain/ "
                       "sub-folders, rain-*/norain-* files, or side-by-side clean | rainy images)")


def pair_files(ds: Dataset, index: int) -> tuple[Path, Path]:
    """The files pair ``index`` of a :func:`paired_dataset` is read from (one file twice for side-by-side)."""
    if hasattr(ds, "pairs"):
        return ds.pairs[index]
    return ds.files[index], ds.files[index]


@dataclass
class PairScores:
    """One pair's scores: ``input`` (the rainy image as it is), ``derained`` and the derained image, or an
    ``error`` (the pair could not be read or derained)."""

    index: int
    name: str
    input: dict[str, float] | None = None
    derained: dict[str, float] | None = None
    output: torch.Tensor | None = None
    error: str | None = None


def score_pairs(ds: Dataset, model: nn.Module | None = None, *, limit: int | None = None, score_input: bool = True,
                keep_going: bool = False, **derain_kwargs) -> Iterator[PairScores]:
    """Score the first ``limit`` pairs of ``ds`` (items with ``rain``, ``clean``, ``name``), derained by
    ``model`` (through :func:`jdnet_plugin.inference.derain_tensor` with ``derain_kwargs``) when given.
    ``keep_going``: a pair that fails is yielded with its error instead of raising."""
    from ..data import DatasetError
    from ..inference import derain_tensor
    from ..io import ImageReadError

    n = len(ds) if not limit else min(limit, len(ds))
    for i in range(n):
        name = pair_files(ds, i)[0].stem
        try:
            item = ds[i]
            rain, clean, name = item["rain"], item["clean"], str(item.get("name", name))
            out = None if model is None else derain_tensor(model, rain, **derain_kwargs)
            yield PairScores(i, name, image_scores(rain, clean) if score_input else None,
                             None if out is None else image_scores(out, clean), out)
        except (DatasetError, ImageReadError, ValueError, OSError, RuntimeError) as e:
            if not keep_going:
                raise
            yield PairScores(i, name, error=str(e))
