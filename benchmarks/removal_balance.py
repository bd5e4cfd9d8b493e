"""How much a derainer takes away against how much rain there is: the mean luminance (x 255) it removes, the
rain's own mean (paired sets), and the mean error where there is no rain (the pixels the rain layer changes by
less than 2 / 255: a derainer that removes a veil that is not there darkens them, < 0).

Sets: paired folders (default Rain100L test, held-out), the project's own rain drawn on clean images (default
``light`` on Kodak24, seed = the image's index: in-distribution) and unpaired photos (default the real rainy
photos: removed only). One row per set and weights file. The model runs on the whole image (no tiling); under a
veil over the whole image no pixel is dry and the last figure means little.

    python benchmarks/removal_balance.py --weights default runs/x/final.pt [--limit 50] [--rain light storm]
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from _results import SHARED  # also puts the repo on sys.path

from jdnet_plugin import load_model  # noqa: E402
from jdnet_plugin.io import list_images, read_rgb, to_tensor  # noqa: E402
from jdnet_plugin.metrics import paired_dataset  # noqa: E402
from jdnet_plugin.rain import add_rain_pair  # noqa: E402
from jdnet_plugin.utils.color import luma  # noqa: E402

DATA = SHARED / "data"
DRY = 2 / 255  # a pixel the rain changes by less than this counts as rain-free


def balance(rainy: torch.Tensor, derained: torch.Tensor, clean: torch.Tensor | None) -> tuple[float, ...]:
    """(removed, rain, error where dry) mean luminance x 255 of ``(3, H, W)`` images; NaN where unpaired."""
    y_rainy, y_out = luma(rainy), luma(derained)
    removed = float(255 * (y_rainy - y_out).mean())
    if clean is None:
        return removed, float("nan"), float("nan")
    y_clean = luma(clean)
    dry = (y_rainy - y_clean).abs() < DRY  # none under a veil over the whole image: NaN, left out of the mean
    error = float(255 * (y_out - y_clean)[dry].mean()) if dry.any() else float("nan")
    return removed, float(255 * (y_rainy - y_clean).mean()), error


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def sets(args: argparse.Namespace) -> Iterator[tuple[str, list[tuple[torch.Tensor, torch.Tensor | None]]]]:
    """(name, [(rainy, clean or None), ...]) for every set asked for."""
    for folder in args.pairs:
        pairs = paired_dataset(folder)
        items = (pairs[i] for i in range(min(len(pairs), args.limit)))
        yield f"held-out: {Path(folder).name}", [(item["rain"], item["clean"]) for item in items]
    clean = [to_tensor(read_rgb(f)) for f in list_images(args.clean)[:args.limit]] if args.rain else []
    for preset in args.rain:
        # The target is the clean image through the preset's camera (blur, noise), as in training.
        pairs = [add_rain_pair(c, preset, seed=i) for i, c in enumerate(clean)]
        yield f"in-distribution: {Path(args.clean).name} + own {preset}", [(r.clamp(0, 1), t) for r, t in pairs]
    for folder in args.photos:
        yield f"held-out: {Path(folder).name} (no ground truth)", [
            (to_tensor(read_rgb(f)), None) for f in list_images(folder)[:args.limit]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=["default"])
    ap.add_argument("--pairs", nargs="*", default=[str(DATA / "rain100L_test")], help="paired folders")
    ap.add_argument("--clean", default=str(DATA / "clean" / "Kodak24"), help="clean images for --rain")
    ap.add_argument("--rain", nargs="*", default=["light"], help="the project's presets drawn on --clean")
    ap.add_argument("--photos", nargs="*", default=[str(DATA / "real_rainy")], help="unpaired rainy photos")
    ap.add_argument("--limit", type=int, default=100, help="at most this many images per set")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.limit < 1:
        ap.error("--limit must be at least 1")
    torch.set_num_threads(args.threads)
    models = {w: load_model(w) for w in args.weights}
    print("| set | images | weights | rain's mean | removed | error where dry |")
    print("|---|---|---|---|---|---|")
    for name, images in sets(args):
        if not images:
            raise SystemExit(f"{name}: no images")
        for w, model in models.items():
            rows = []
            with torch.inference_mode():
                for rainy, clean in images:
                    rows.append(balance(rainy, model(rainy[None])[0].clamp(0, 1), clean))
            removed, rain, dry = torch.tensor(rows, dtype=torch.float64).nanmean(0).tolist()
            print(f"| {name} | {len(images)} | `{w}` | {_num(rain)} | {_num(removed)} | {_num(dry)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
