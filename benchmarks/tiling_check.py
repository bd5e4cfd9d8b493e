"""Tiled vs untiled deraining (PSNR-RGB between the two outputs) with the default weights.

    python benchmarks/tiling_check.py   # needs ../shared/data/rain100L_test and Ultralytics' bus.jpg
"""
from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jdnet_plugin  # noqa: E402
from jdnet_plugin.inference import derain_tensor  # noqa: E402
from jdnet_plugin.io import list_images, read_rgb, to_tensor  # noqa: E402
from jdnet_plugin.metrics import psnr  # noqa: E402

RAIN100L = Path(__file__).resolve().parents[2] / "shared" / "data" / "rain100L_test" / "rain"


def agreement(model, x: torch.Tensor, tile: int, overlap: int) -> float:
    whole = derain_tensor(model, x, max_pixels=x.shape[-2] * x.shape[-1])
    return psnr(derain_tensor(model, x, tile=tile, overlap=overlap), whole, convention="rgb").item()


def main() -> int:
    torch.set_num_threads(2)
    model = jdnet_plugin.load_model()
    images = [to_tensor(read_rgb(p))[None] for p in list_images(RAIN100L)[:5]]
    for tile, overlap in [(128, 32), (128, 64), (256, 64)]:
        vals = [round(agreement(model, x, tile, overlap), 1) for x in images]
        print(f"Rain100L first {len(images)} images, tile {tile} overlap {overlap}: PSNR-RGB {vals}")
    bus = cv2.resize(read_rgb(str(files("ultralytics") / "assets" / "bus.jpg")), (1920, 1080))
    print(f"1080p frame, tile 512 overlap 32: PSNR-RGB {agreement(model, to_tensor(bus)[None], 512, 32):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
