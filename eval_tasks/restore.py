"""Restoration quality: PSNR and SSIM (Y channel as published, RGB as the JDNet authors) of several deraining
weights on several paired datasets, next to the rainy input itself.

    python eval_tasks/restore.py --data ../shared/data/rain100L_test --weights a.pt b.pt --out runs/restore

A dataset is any folder ``jdnet_plugin.data.make_dataset`` reads as pairs (rain/ + norain/ sub-folders,
``rain-*``/``norain-*`` files, side-by-side images). Per-image values are cached per (dataset, weights).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jdnet_plugin.eval_tasks.common import (cli_entry, digest, files_fingerprint, load_derainer, markdown_table,
                                            pick_device, sha256_file, to_jsonable, write_report)
from jdnet_plugin.checkpoint import weights_file
from jdnet_plugin.metrics import PAIR_METRICS, paired_dataset, score_pairs
from jdnet_plugin.utils.atomic import atomic_write_text

__all__ = ["COLUMNS", "INPUT", "dataset_names", "restoration_results", "evaluate_restoration",
           "build_parser", "main"]

COLUMNS = PAIR_METRICS
INPUT = "input"


def _per_image(ds, model: torch.nn.Module | None, tile: int | None, desc: str,
               limit: int | None) -> dict[str, dict[str, float]]:
    n = len(ds) if not limit else min(limit, len(ds))
    scores = score_pairs(ds, model, limit=limit, score_input=model is None, tile=tile)
    return {s.name: s.input if model is None else s.derained
            for s in tqdm(scores, total=n, desc=desc, unit="img", disable=None)}


def _mean(values: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean per column over the images (an identical pair makes PSNR ``inf``, and so the mean)."""
    return {c: float(np.mean([d[c] for d in values.values()])) for c in COLUMNS}


def _labels(weights: Sequence[str]) -> list[str]:
    labels = []
    for w in weights:
        base = Path(w).stem if Path(w).suffix else str(w)
        label, k = base, 2
        while label in labels or label == INPUT:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def _plot(path: Path, table: dict[str, dict[str, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jdnet_plugin.utils.atomic import atomic_path

    datasets = list(table)
    methods = list(next(iter(table.values())))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.5 * len(datasets) * max(1, len(methods)) / 2, 4))
    width = 0.8 / len(methods)
    for ax, col in zip(axes, ("psnr_y", "ssim_y")):
        for i, m in enumerate(methods):
            vals = [table[d][m][col] for d in datasets]
            ax.bar(np.arange(len(datasets)) + i * width, vals, width, label=m)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(methods) - 1) / 2, datasets)
        ax.set_title(col.replace("_", " ").upper().replace(" Y", " (Y)"))
        if col.startswith("ssim"):
            ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def dataset_names(paths: Sequence[Path]) -> list[str]:
    """A distinct name per dataset folder: its name, ``-2``, ``-3`` ... where two share one."""
    names: list[str] = []
    for d in paths:
        name, k = d.resolve().name, 2
        while name in names:
            name, k = f"{d.resolve().name}-{k}", k + 1
        names.append(name)
    return names


def _dataset_values(path: Path, ds, name: str, method: tuple, cache: Path, device: torch.device,
                    tile: int | None, max_images: int | None) -> dict[str, dict[str, float]]:
    """Per-image values of one (dataset, method), cached by the dataset's files, the weights, tile and limit."""
    label, wfile, wsha = method
    files = sorted(p for p in path.rglob("*") if p.is_file())
    source = {"data": str(path.resolve()), "fingerprint": files_fingerprint(files, path), "limit": max_images}
    cfile = cache / f"restore-{name}-{label}-{digest({**source, 'weights': wsha, 'tile': tile}, 12)}.json"
    if cfile.is_file():
        values = json.loads(cfile.read_text())
    else:
        model = None if wfile is None else load_derainer(wfile, device)[0]
        values = _per_image(ds, model, tile, f"{name}: {label}", max_images)
        atomic_write_text(cfile, json.dumps(to_jsonable(values)))
    return {k: {c: float(v) for c, v in d.items()} for k, d in values.items()}


def restoration_results(data: Sequence[str | Path], weights: Sequence[str | Path], cache: Path, *,
                        device: str | None = None, tile: int | None = None, max_images: int | None = None,
                        names: Sequence[str] | None = None) -> dict:
    """PSNR / SSIM (Y and RGB) of the rainy input and of each weights on each paired dataset (its first
    ``max_images`` pairs): ``{"datasets": {name: {method: {column: mean}}}, "images": {name: count},
    "weights": {label: {"path", "sha256"}}, "per_image": {name: {method: {image: {column: value}}}}}``.
    Methods are ``"input"`` and a label per weights (file stem or registered name)."""
    cache = Path(cache).absolute()
    torch_device = pick_device(device)
    weights_files = [weights_file(w) for w in weights]  # fail before any work
    datasets = [(Path(d), paired_dataset(Path(d))) for d in data]
    names = list(names) if names is not None else dataset_names([d for d, _ in datasets])
    methods = [(INPUT, None, None)] + [(lab, f, sha256_file(f)) for lab, f in zip(_labels(weights), weights_files)]
    table: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    per_image: dict[str, dict[str, dict]] = {n: {} for n in names}
    counts = {}
    for (path, ds), name in zip(datasets, names):
        for method in methods:
            values = _dataset_values(path, ds, name, method, cache, torch_device, tile, max_images)
            table[name][method[0]] = _mean(values)
            per_image[name][method[0]] = values
            counts[name] = len(values)
    return {"datasets": table, "images": counts,
            "weights": {lab: {"path": str(f), "sha256": s} for lab, f, s in methods[1:]}, "per_image": per_image}


CONVENTIONS = {"y": "BT.601 Y, 8-bit, MATLAB-style PSNR/SSIM (published tables)",
               "rgb": "RGB in [0, 1], Gaussian-window SSIM with zero padding (JDNet authors)"}


def evaluate_restoration(args: argparse.Namespace) -> int:
    out: Path = args.out.absolute()
    res = restoration_results(args.data, args.weights, args.cache or out / "cache", device=args.device,
                              tile=args.tile, max_images=args.max_images)
    table, counts = res["datasets"], res["images"]
    rows = [[n, m, *(table[n][m][c] for c in COLUMNS)] for n in table for m in table[n]]
    md_table = markdown_table(["dataset", "method", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "SSIM-RGB"], rows)
    report = {"datasets": table, "images": counts, "weights": res["weights"], "conventions": CONVENTIONS,
              "per_image": res["per_image"]}
    md = ["# Restoration: PSNR / SSIM", "", md_table, "",
          "Y: BT.601 luma, 8-bit, as the published tables; RGB: as the JDNet authors. 'input' is the rainy "
          "image itself.", "", "Images: " + ", ".join(f"{n} {counts[n]}" for n in table)]
    write_report(out, report, "\n".join(md))
    _plot(out / "plot.png", table)
    print(md_table)
    print(f"report: {out / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_tasks/restore.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="paired datasets (rainy + clean)")
    p.add_argument("--weights", nargs="+", default=["default"], help="deraining checkpoints or registered names")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cache", type=Path, default=None, help="per-image results cache (default: OUT/cache)")
    p.add_argument("--device", default=None)
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--max-images", type=int, default=None, help="first N pairs of each dataset only")
    return p


main = cli_entry(evaluate_restoration, build_parser)


if __name__ == "__main__":
    sys.exit(main())
