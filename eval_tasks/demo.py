"""The main job in one command: rain on a sample image, JDNet removes it, the three side by side.

    python eval_tasks/demo.py [--image PATH] [--weights W] [--rain light|heavy] [--detector PATH] --out DIR

Without ``--image`` it uses Ultralytics' sample ``bus.jpg`` (shipped in the package, no download).
Writes ``clean.png``, ``rainy.png``, ``derained.png`` and ``demo.png`` (clean | rainy | derained with
PSNR/SSIM on the Y channel), and ``detections.png`` when a detector is available: ``--detector PATH``
(anything Ultralytics' ``YOLO()`` loads from a local file), else ``../shared/models/yolov5n-coco.torchscript``
when it is there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

import jdnet_plugin
from jdnet_plugin.io import read_rgb, write_rgb
from jdnet_plugin.metrics import psnr, ssim
from jdnet_plugin.rain import add_rain

from jdnet_plugin.eval_tasks.common import cli_entry

SHARED_DETECTOR = Path(__file__).resolve().parents[2] / "shared" / "models" / "yolov5n-coco.torchscript"


def sample_image() -> Path:
    try:
        from importlib.resources import files

        return Path(str(files("ultralytics") / "assets" / "bus.jpg"))
    except ModuleNotFoundError as e:
        raise FileNotFoundError("no --image given and Ultralytics (which ships the sample image) is not installed") from e


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((34, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 2, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def _scores(img: np.ndarray, clean: np.ndarray) -> dict:
    a, b = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 for x in (img, clean))
    return {"psnr_y": round(psnr(a, b, convention="y").item(), 2), "ssim_y": round(ssim(a, b, convention="y").item(), 4)}


def _detect(detector: str, images: dict[str, np.ndarray]) -> np.ndarray:
    from jdnet_plugin.integrations import load_yolo

    yolo = load_yolo(detector, task="detect")
    panels = []
    for name, rgb in images.items():
        result = yolo.predict(np.ascontiguousarray(rgb[:, :, ::-1]), verbose=False, save=False)[0]
        n = len(result.boxes)
        conf = float(result.boxes.conf.mean()) if n else 0.0
        panels.append(_caption(result.plot()[:, :, ::-1], f"{name}: {n} objects, mean conf {conf:.2f}"))
    return np.concatenate(panels, 1)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", help="a clean image (default: Ultralytics' bus.jpg)")
    ap.add_argument("--weights", default=jdnet_plugin.DEFAULT_WEIGHTS, help="weights name or checkpoint path")
    ap.add_argument("--rain", default="heavy", help="rain preset (jdnet_plugin.rain.list_rain_presets())")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector", help="a local YOLO weights file to draw detections on rainy and derained")
    ap.add_argument("--out", default="outputs/demo", help="output folder")
    return ap


def _run(args: argparse.Namespace) -> int:
    image = Path(args.image) if args.image else sample_image()
    clean = read_rgb(image)
    model = jdnet_plugin.load_model(args.weights)
    rainy = add_rain(clean, args.rain, seed=args.seed)
    derained = jdnet_plugin.derain(rainy, model=model)
    out = Path(args.out)
    for name, img in (("clean", clean), ("rainy", rainy), ("derained", derained)):
        write_rgb(out / f"{name}.png", img)
    scores = {"image": str(image), "weights": str(args.weights), "rain": args.rain, "seed": args.seed,
              "rainy": _scores(rainy, clean), "derained": _scores(derained, clean)}
    panel = np.concatenate([
        _caption(clean, "clean"),
        _caption(rainy, f"rainy ({args.rain}): {scores['rainy']['psnr_y']:.2f} dB, SSIM {scores['rainy']['ssim_y']:.3f}"),
        _caption(derained, f"JDNet: {scores['derained']['psnr_y']:.2f} dB, SSIM {scores['derained']['ssim_y']:.3f}"),
    ], 1)
    write_rgb(out / "demo.png", panel)
    detector = args.detector or (str(SHARED_DETECTOR) if SHARED_DETECTOR.is_file() else None)
    if detector:
        try:
            write_rgb(out / "detections.png", _detect(detector, {"rainy": rainy, "derained": derained}))
            scores["detector"] = detector
        except (FileNotFoundError, ImportError) as e:
            print(f"detections skipped: {e}", file=sys.stderr)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    print(f"rainy    vs clean: PSNR-Y {scores['rainy']['psnr_y']:.2f} dB  SSIM-Y {scores['rainy']['ssim_y']:.4f}")
    print(f"derained vs clean: PSNR-Y {scores['derained']['psnr_y']:.2f} dB  SSIM-Y {scores['derained']['ssim_y']:.4f}")
    print(f"wrote {out / 'demo.png'}" + (f" and {out / 'detections.png'}" if (out / "detections.png").exists() else ""))
    return 0


main = cli_entry(_run, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
