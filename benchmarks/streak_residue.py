"""Streaks left on real rainy photos (no ground truth): the mean step between horizontally neighbouring pixels
(across near-vertical streaks) and between vertically neighbouring ones (along them: texture) of the luminance
(x 255), in a crop, for the rainy photo and each weights file. Fewer streaks left: a smaller first number with
the second kept. Then the lines that run the crop's height: the column means' deviation from their smoothed
course (std x 255) and its skewness (> 0: bright lines stand out, < 0: dark ones; a derainer that removes only
the bright part of a streak leaves dark lines).

    python benchmarks/streak_residue.py --weights default runs/x/final.pt [--photos 50 90] [--box 300 0 480 200] \
        [--zoom crops.jpg]

``--zoom`` also writes the box of each photo, rainy and derained by each weights file side by side, magnified
(nearest neighbour, ``--scale``, default 2), one row per photo: the 2x look the stage rules ask for.

The README's stage-10 row (the trees of real_rainy/50.png and 90.png, the default photos and box) is
``--weights jdnet-lite.broadrain-s9 runs/stage10-control/final.pt jdnet-lite.broadrain-s10``
(benchmarks/results/stage10/streak_residue.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from _results import SHARED  # also puts the repo on sys.path

from jdnet_plugin import load_model  # noqa: E402
from jdnet_plugin.io import read_rgb, to_tensor, to_uint8, write_rgb  # noqa: E402
from jdnet_plugin.utils.color import luma  # noqa: E402

REAL = SHARED / "data" / "real_rainy"


def steps(img: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[float, float]:
    """Mean |horizontal| and |vertical| luminance step (x 255) of ``img`` ``(1, 3, H, W)`` in ``box``
    ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    lum = luma(img[0, :, y0:y1, x0:x1].double())[0]
    return float(255 * lum.diff(dim=1).abs().mean()), float(255 * lum.diff(dim=0).abs().mean())


def lines(img: torch.Tensor, box: tuple[int, int, int, int], sigma: float = 3.0) -> tuple[float, float]:
    """Std (x 255) and skewness of the column means of the luminance of ``img`` ``(1, 3, H, W)`` in ``box``
    minus their Gaussian-smoothed course (``sigma`` columns, smoothed over the photo's whole width: only the
    photo's own edges are padded): vertical lines as long as the box is high."""
    x0, y0, x1, y1 = box
    profile = luma(img[0, :, y0:y1].double())[0].mean(0)
    course = gaussian_blur(profile.view(1, 1, 1, -1), [2 * int(4 * sigma) + 1, 1], [sigma, sigma])[0, 0, 0]
    dev = (profile - course)[x0:x1]
    dev = dev - dev.mean()
    std = float(dev.std(correction=0))
    return (255 * std, float((dev ** 3).mean() / std ** 3)) if std > 1e-9 else (0.0, 0.0)


def zoom(images: list[torch.Tensor], box: tuple[int, int, int, int], scale: int = 2) -> torch.Tensor:
    """``box`` of each ``(1, 3, H, W)`` image, magnified ``scale`` times by nearest neighbour, side by side
    (``(3, scale * h, scale * w * len(images))``)."""
    x0, y0, x1, y1 = box
    crops = [y[0, :, y0:y1, x0:x1].repeat_interleave(scale, 1).repeat_interleave(scale, 2) for y in images]
    return torch.cat(crops, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", default=["default"])
    ap.add_argument("--photos", nargs="+", default=["50", "90"], help="stems of ../shared/data/real_rainy/*.png")
    ap.add_argument("--box", nargs=4, type=int, default=[300, 0, 480, 200], metavar=("X0", "Y0", "X1", "Y1"))
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--zoom", type=Path, help="write the magnified boxes here (JPEG or PNG)")
    ap.add_argument("--scale", type=int, default=2)
    args = ap.parse_args()
    if args.scale < 1:
        ap.error(f"--scale must be at least 1, not {args.scale}")
    rows = []
    models = {w: load_model(w) for w in args.weights}
    box = tuple(args.box)
    print("| photo | figure | rainy | " + " | ".join(args.weights) + " |")
    print("|---" * (len(args.weights) + 3) + "|")
    for stem in args.photos:
        x = to_tensor(read_rgb(args.real / f"{stem}.png"))[None]
        if min(box) < 0 or box[2] > x.shape[-1] or box[3] > x.shape[-2] or box[0] + 1 >= box[2] or box[1] + 1 >= box[3]:
            ap.error(f"--box {box} does not fit {args.real / stem}.png ({x.shape[-1]}x{x.shape[-2]})")
        with torch.no_grad():
            images = [x] + [m(x).clamp(0, 1) for m in models.values()]
        print(f"| {stem}.png | step across / along | "
              + " | ".join("{:.2f} / {:.2f}".format(*steps(y, box)) for y in images) + " |")
        print(f"| {stem}.png | lines: std / skew | "
              + " | ".join("{:.2f} / {:+.2f}".format(*lines(y, box)) for y in images) + " |")
        rows.append(zoom(images, box, args.scale))
    if args.zoom:
        write_rgb(args.zoom, to_uint8(torch.cat(rows, 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
