"""How sure a dataset-level figure is: the percentile bootstrap over images.

Every report resamples the same way: its images sorted by name, ``REPLICATES`` draws of as many images with
replacement from ``numpy.random.default_rng(SEED)``. Two reports over the same images (two weights files, say)
therefore share their draws, and the difference of their replicates is a paired bootstrap of the difference
(:func:`paired_difference`). mAP and mIoU are recomputed on each draw from per-image statistics (Ultralytics'
``ap_per_class`` on the drawn images' matches; the summed confusion matrices of the drawn images).
"""
from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdnet_plugin.eval_tasks.common import EvalError, digest, fraction_recovered
from jdnet_plugin.utils.atomic import atomic_path

__all__ = ["REPLICATES", "SEED", "add_bootstrap_arg", "check_draws", "resample_counts", "miou_replicates",
           "detection_replicates", "cached_detection_replicates", "interval",
           "bootstrap_section", "paired_difference"]

REPLICATES = 1000
SEED = 0


def add_bootstrap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=REPLICATES, metavar="N",
                   help="draws of the images for the 95 %% intervals (default: %(default)s; 0: no intervals; "
                        "detection recomputes mAP for each draw: about 30 s per copy for 1000 draws of 100 images, "
                        "kept in the cache for the next run)")


def check_draws(replicates: int) -> None:
    if replicates < 0:
        raise EvalError(f"the number of bootstrap draws must be >= 0, got {replicates}")


def resample_counts(n: int, replicates: int = REPLICATES, seed: int = SEED) -> np.ndarray:
    """``(replicates, n)``: how often each of ``n`` images is drawn in each replicate."""
    if n < 1:
        raise EvalError("the bootstrap needs at least one image")
    check_draws(replicates)
    idx = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    counts = np.zeros((replicates, n), np.int64)
    np.add.at(counts, (np.arange(replicates)[:, None], idx), 1)
    return counts


def miou_replicates(per_image: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """mIoU of each replicate from ``(n, N, N + 1)`` per-image confusion matrices (classes present in the
    replicate's ground truth, as :func:`jdnet_plugin.eval_tasks.segment.iou_from_confusion`)."""
    from jdnet_plugin.eval_tasks.segment import iou_from_confusion

    n = per_image.shape[0]
    cms = torch.from_numpy(counts.astype(np.float64) @ per_image.reshape(n, -1).astype(np.float64))
    iou, present = iou_from_confusion(cms.view(len(counts), *per_image.shape[1:]))
    return ((iou * present).sum(-1) / present.sum(-1).clamp(min=1)).numpy()


def detection_replicates(per_image: Mapping[str, np.ndarray], counts: np.ndarray) -> dict[str, np.ndarray]:
    """``{"map50", "map50_95"}`` of each replicate from per-image matches: ``tp`` (predictions x IoU
    thresholds), ``conf``, ``pred_cls``, ``pred_image``, ``target_cls``, ``target_image`` (image indices)."""
    from ultralytics.utils.metrics import ap_per_class

    out = {"map50": np.empty(len(counts)), "map50_95": np.empty(len(counts))}
    for r, c in enumerate(counts):
        wp, wt = c[per_image["pred_image"]], c[per_image["target_image"]]
        target = np.repeat(per_image["target_cls"], wt)
        if len(target) == 0:
            out["map50"][r] = out["map50_95"][r] = np.nan
            continue
        ap = ap_per_class(np.repeat(per_image["tp"], wp, axis=0), np.repeat(per_image["conf"], wp),
                          np.repeat(per_image["pred_cls"], wp), target)[5]
        out["map50"][r], out["map50_95"][r] = (ap[:, 0].mean(), ap.mean()) if len(ap) else (0.0, 0.0)
    return out


def cached_detection_replicates(per_image: Mapping[str, np.ndarray], counts: np.ndarray,
                                cache: Path | None) -> dict[str, np.ndarray]:
    """:func:`detection_replicates`, kept in ``cache`` (a folder; None: not kept) under a hash of the matches
    and the draws: a copy measured before (clean and rainy images, for every weights file) costs nothing."""
    if cache is None:
        return detection_replicates(per_image, counts)
    h = hashlib.sha256(np.ascontiguousarray(counts).tobytes())
    for k in sorted(per_image):
        h.update(k.encode() + np.ascontiguousarray(per_image[k]).tobytes())
    path = Path(cache) / f"map-replicates-{h.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    out = detection_replicates(per_image, counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **out)
    return out


def interval(replicates: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of the finite replicates; None when fewer than half are finite."""
    v = replicates[np.isfinite(replicates)]
    if len(v) < len(replicates) / 2:
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]


def bootstrap_section(names: Sequence[str], copies: Mapping[str, Mapping[str, np.ndarray]],
                      metrics: Sequence[str]) -> dict[str, Any] | None:
    """The report's ``bootstrap``: for each metric the 95 % interval of every copy and of the recovered fraction
    (and of the clean cost, ``clean - clean_derained``, where that copy exists), with the recovered fraction's
    replicates (4 decimals) for paired comparisons; ``images`` identifies the image set. None without draws."""
    replicates = len(next(iter(next(iter(copies.values())).values()))) if copies else 0
    if replicates == 0:
        return None
    out: dict[str, Any] = {"replicates": replicates, "seed": SEED, "images": digest(sorted(names), 16),
                           "level": 0.95, "intervals": {}, "recovered_fraction": {}}
    for m in metrics:
        reps = {c: v[m] for c, v in copies.items()}
        out["intervals"][m] = {c: interval(v) for c, v in reps.items()}
        if "clean_derained" in reps:
            out["intervals"][m]["clean_cost"] = interval(reps["clean"] - reps["clean_derained"])
        if {"clean", "rainy", "derained"} <= set(reps):
            frac = fraction_recovered(reps["clean"], reps["rainy"], reps["derained"])
            out["recovered_fraction"][m] = {"ci95": interval(frac),
                                            "replicates": [None if not np.isfinite(x) else round(float(x), 4)
                                                           for x in frac]}
    return out


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> dict[str, Any] | None:
    """The 95 % interval of ``b - a`` for the recovered fraction of ``metric``, from two ``bootstrap`` sections
    over the same images (None when they differ in images, draws or replicates, or lack the metric)."""
    same = all(a.get(k) == b.get(k) for k in ("replicates", "seed", "images"))
    ra, rb = (s.get("recovered_fraction", {}).get(metric, {}).get("replicates") for s in (a, b))
    if not same or ra is None or rb is None or len(ra) != len(rb):
        return None
    diff = np.array([np.nan if x is None or y is None else y - x for x, y in zip(ra, rb)], np.float64)
    ci = interval(diff)
    return {"ci95": ci, "p_b_better": float(np.mean(diff[np.isfinite(diff)] > 0)) if ci else None}
