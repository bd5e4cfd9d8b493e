"""Tiled vs untiled deraining (PSNR-RGB between the two outputs) with the default weights.

    python benchmarks/tiling_check.py [--images N]   # needs ../shared/data/rain100L_test and Ultralytics' bus.jpg

Prints, per tile/overlap setting, the minimum and median over the Rain100L test images, and the 1080p frame.
"""
from __future__ import annotations

from importlib.resources import files

import cv2
import torch

from _results import SHARED  # also puts the repo on sys.path

import jdnet_plugin  # noqa: E402
from jdnet_plugin.inference import derain_tensor  # noqa: E402
from jdnet_plugin.io import list_images, read_rgb, to_tensor  # noqa: E402
from jdnet_plugin.metrics import psnr  # noqa: E402

RAIN100L = SHARED / "data" / "rain100L_test" / "rain"


def agreement(model, x: torch.Tensor, tile: int, overlap: int) -> float:
    whole = derain_tensor(model, x, max_pixels=x.shape[-2] * x.shape[-1])
    return psnr(derain_tensor(model, x, tile=tile, overlap=overlap), whole, convention="rgb").item()


def main() -> int:
    import argparse
    import statistics

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100, help="the first N Rain100L test images")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--settings", nargs="+", default=["128:32", "128:64", "256:64"], metavar="TILE:OVERLAP",
                   help="tile and overlap pairs for the Rain100L images")
    p.add_argument("--no-1080p", dest="hd", action="store_false", help="skip the 1080p frame")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = jdnet_plugin.load_model()
    images = [to_tensor(read_rgb(p))[None] for p in list_images(RAIN100L)[:args.images]]
    for tile, overlap in (map(int, t.split(":")) for t in args.settings):
        vals = [agreement(model, x, tile, overlap) for x in images]
        print(f"Rain100L {len(images)} images, tile {tile} overlap {overlap}: PSNR-RGB min {min(vals):.1f}, "
              f"median {statistics.median(vals):.1f}", flush=True)
    if not args.hd:
        return 0
    bus = cv2.resize(read_rgb(str(files("ultralytics") / "assets" / "bus.jpg")), (1920, 1080))
    for overlap in (32, 64):
        print(f"1080p frame, tile 512 overlap {overlap}: PSNR-RGB {agreement(model, to_tensor(bus)[None], 512, overlap):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
