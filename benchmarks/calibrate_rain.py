"""Calibrate the rain presets against Rain100L / Rain100H and draw a side-by-side comparison.

Measures the input PSNR on the Y channel (BT.601, 8-bit, per image then mean: the published
convention, see ../shared/docs/evaluation.md) of ``add_rain(clean)`` vs ``clean`` on
``rain100L_test/norain``, next to the real Rain100L rainy images of the same scenes, and times
``add_rain`` on one CPU thread. Writes ``rain_calibration.json`` and ``rain_comparison.png``
(clean | real Rain100L | our light | our heavy, a native-resolution crop of 3 scenes).

    .venv/bin/python benchmarks/calibrate_rain.py [--data ../shared/data/rain100L_test] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jdnet_plugin.io import list_images, read_rgb, to_tensor, write_rgb  # noqa: E402
from jdnet_plugin.rain import add_rain  # noqa: E402

TARGETS = {"light": 26.9, "heavy": 13.5}  # published input PSNR-Y of Rain100L and Rain100H
SCENES = (1, 7, 41)  # landscape scenes shown in the comparison (1-based Rain100L numbers)
CROP = (40, 80, 200, 240)  # y, x, height, width at native resolution: thin streaks stay visible


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of 8-bit RGB, rounded to 8 bits as MATLAB's rgb2ycbcr does."""
    x = rgb.astype(np.float64) / 255.0
    return np.round(16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]))


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(y_channel(a), y_channel(b), data_range=255))


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 3), "std": round(statistics.pstdev(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def median_ms(fn, repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds per call; on a shared machine the CPU time is the stable one."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_ms": round(1000 * statistics.median(wall), 2), "cpu_ms": round(1000 * statistics.median(cpu), 2)}


def label(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "rain100L_test")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--seed", type=int, default=0, help="image i gets seed + i")
    ap.add_argument("--limit", type=int, default=None, help="use the first N images only")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    clean_files = list_images(args.data / "norain")[: args.limit]
    if not clean_files:
        print(f"error: no images in {args.data / 'norain'}", file=sys.stderr)
        return 2
    psnr: dict[str, list[float]] = {"real_rain100L": [], **{p: [] for p in TARGETS}}
    shown: dict[int, list[np.ndarray]] = {}
    for i, clean_path in enumerate(clean_files):
        clean = read_rgb(clean_path)
        real = read_rgb(args.data / "rain" / clean_path.name.replace("norain", "rain"))
        psnr["real_rain100L"].append(psnr_y(real, clean))
        ours = {p: add_rain(clean, p, seed=args.seed + i) for p in TARGETS}
        for p, rainy in ours.items():
            psnr[p].append(psnr_y(rainy, clean))
        if i + 1 in SCENES:
            y, x, h, w = CROP
            shown[i + 1] = [t[y:y + h, x:x + w] for t in (clean, real, ours["light"], ours["heavy"])]

    img = read_rgb(clean_files[0])
    crop = to_tensor(img[:64, :64])
    timing = {f"{p}_{img.shape[1]}x{img.shape[0]}_uint8": median_ms(lambda p=p: add_rain(img, p, seed=1), 20)
              for p in TARGETS}
    timing.update({f"{p}_64x64_tensor": median_ms(lambda p=p: add_rain(crop, p, seed=1), 50) for p in TARGETS})

    result = {
        "what": "input PSNR-Y (BT.601, 8-bit, per image then mean) of add_rain(clean) vs clean",
        "data": str(args.data / "norain"), "images": len(clean_files), "seed": f"{args.seed} + image index",
        "targets_db": TARGETS,
        "psnr_y_db": {k: summary(v) for k, v in psnr.items()},
        "gap_to_target_db": {p: round(statistics.fmean(psnr[p]) - t, 3) for p, t in TARGETS.items()},
        "timing_one_thread": timing,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"1 thread; load average {os.getloadavg()[0]:.1f} (the machine is shared)",
        "command": "python benchmarks/calibrate_rain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rain_calibration.json").write_text(json.dumps(result, indent=2) + "\n")

    titles = ("clean", "real Rain100L", "ours: light", "ours: heavy")
    rows = [np.hstack([label(t, f"{name} #{scene}") for t, name in zip(tiles, titles)])
            for scene, tiles in shown.items()]
    if rows:
        write_rgb(args.out / "rain_comparison.png", np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(json.dumps(result["psnr_y_db"], indent=2), json.dumps(timing, indent=2), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
