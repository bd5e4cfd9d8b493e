"""A sheet of the rain presets next to Rain100L's rain and real rainy photos, to look at side by side.

    python benchmarks/rain_sheet.py --out outputs/rain_sheet.png [--shared ../shared] [--presets broad storm ...]

Row 1: Rain100L test inputs and real rainy photos (``../shared``); then one row per preset, each on the
clean backgrounds of the Rain100L pairs (their rain removed), seeds fixed. Data stays in ``../shared``:
the sheet is written locally, not committed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from jdnet_plugin.io import read_rgb, write_rgb
from jdnet_plugin.rain import add_rain, list_rain_presets

TILE = (240, 160)  # width, height of one picture (half of Rain100L's size)
PAIRS = ("001", "017", "042", "077")
REAL = ("50.png", "3.png", "20.png", "81.png")


def _tile(rgb: np.ndarray, caption: str) -> np.ndarray:
    img = cv2.resize(rgb, TILE, interpolation=cv2.INTER_AREA)
    cv2.putText(img, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 0), 1, cv2.LINE_AA)
    return img


def build_sheet(shared: Path, presets: list[str], seed: int = 0) -> np.ndarray:
    bench = shared / "data" / "rain100L_test"
    clean = [read_rgb(bench / "norain" / f"norain-{k}.png") for k in PAIRS]
    top = [_tile(read_rgb(bench / "rain" / f"rain-{k}.png"), f"Rain100L {k}") for k in PAIRS]
    top += [_tile(read_rgb(shared / "data" / "real_rainy" / n), f"real {n}") for n in REAL]
    rows = [np.hstack(top)]
    for p in presets:
        tiles = [_tile(add_rain(c, p, seed=seed + i), f"{p} #{i}") for i, c in enumerate(clean + clean)]
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--out", type=Path, default=Path("outputs/rain_sheet.png"))
    ap.add_argument("--presets", nargs="+", default=[p for p in list_rain_presets() if p not in ("mixed",)])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(args.out, build_sheet(args.shared, args.presets, args.seed))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
