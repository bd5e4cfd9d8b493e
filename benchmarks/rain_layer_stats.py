"""How the training rain compares with benchmark rain, layer by layer: on the clean scenes of a paired set, the
rain layer ``Y(rainy) - Y(clean)`` (BT.601 luma in [0, 1]) of the set's own rainy images and of each preset's.

Per layer: its mean, the fraction of pixels it brightens by more than 0.08 (coverage), the coherence of its
structure tensor (1: every streak along one orientation; lower: several directions or blobs), and the fraction
it darkens by more than 0.03. Means over the scenes (and the coherence's spread).

    python benchmarks/rain_layer_stats.py [--data ../shared/data/rain100L_test] [--presets light broad] [--n 40]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from _results import SHARED  # also puts the repo on sys.path

from jdnet_plugin.io import read_rgb
from jdnet_plugin.rain import add_rain
from jdnet_plugin.utils import color

LUMA = np.array(color.LUMA, np.float32)


def layer_stats(layer: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, coverage, orientation coherence, darkened fraction) of a luma rain layer."""
    pos = np.clip(layer, 0, None)
    gx, gy = cv2.Sobel(pos, cv2.CV_32F, 1, 0), cv2.Sobel(pos, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-9)
    return float(pos.mean()), float((pos > 0.08).mean()), float(coherence), float((layer < -0.03).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "rain100L_test",
                   help="a paired set with rain/ and norain/ (rain-NNN.png next to norain-NNN.png)")
    p.add_argument("--presets", nargs="+", default=["light", "broad"])
    p.add_argument("--n", type=int, default=40, help="scenes (the first n)")
    args = p.parse_args(argv)
    clean_files = sorted((args.data / "norain").iterdir())[:args.n]
    rows: dict[str, list] = {"benchmark": [], **{name: [] for name in args.presets}}
    for i, path in enumerate(clean_files):
        clean = read_rgb(path).astype(np.float32) / 255.0
        rainy = read_rgb(args.data / "rain" / path.name.replace("norain", "rain")).astype(np.float32) / 255.0
        rows["benchmark"].append(layer_stats((rainy - clean) @ LUMA))
        for name in args.presets:
            rows[name].append(layer_stats((add_rain(clean, name, seed=i) - clean) @ LUMA))
    print(f"{len(clean_files)} scenes of {args.data}")
    print("| rain | mean layer | coverage > 0.08 | orientation coherence (sd) | darkened > 0.03 |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        a = np.array(values)
        print(f"| {name} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.3f} | {a[:, 2].mean():.2f} ({a[:, 2].std():.2f}) | "
              f"{a[:, 3].mean():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
