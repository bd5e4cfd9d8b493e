"""Derain the full frame or the detector's letterboxed input? Time and detection quality on footage.

    python benchmarks/derain_resolution.py [--source CLIP] [--frames 60 --stride 6] [--imgsz 640 320] [--out DIR]

The footage is taken as clean; the project's ``light`` rain is added (seed 0), and the detections on the clean
frames are the reference for the mAP of the detections on the rainy and derained frames
(``jdnet_plugin.eval_tasks.detect.detections_map``, as ``detect.py`` footage mode; ``--conf``, default 0.1 as the README's
downstream table: the clip's small overhead cars rarely reach 0.25). For each detector size ``imgsz``:
``attach_derain(at="frame")`` (each frame at its own resolution) against ``at="input"`` (the letterboxed
network input); deraining time is the derainer's own forward time, summed (hooks on the module). The paper
preset has no trained weights yet: it is timed with random weights on ``--paper-frames`` frames (time does not
depend on the weights), without mAP. Writes ``resolution.json`` and ``resolution.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jdnet_plugin.eval_tasks.common import rain_fn  # noqa: E402
from jdnet_plugin.eval_tasks.detect import _dets, detections_map  # noqa: E402
from jdnet_plugin.integrations import attach_derain, detach_derain, load_yolo  # noqa: E402
from jdnet_plugin import create_model, load_model  # noqa: E402
from jdnet_plugin.utils.machine import describe_machine  # noqa: E402
from jdnet_plugin.video import read_frames  # noqa: E402


class ForwardTimer:
    """Seconds spent in a module's forward calls (pre/post hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds, self._t0 = 0.0, 0.0
        self.handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def detect_all(yolo, frames: list[np.ndarray], imgsz: int) -> list[dict[str, np.ndarray]]:
    kw = dict(imgsz=imgsz, conf=0.001, iou=0.7, max_det=300, verbose=False, device="cpu")
    return [_dets(yolo.predict(np.ascontiguousarray(f[..., ::-1]), **kw)[0]) for f in frames]


def timed_detect(yolo, derainer, frames, imgsz: int, at: str) -> tuple[list, float]:
    attach_derain(yolo, model=derainer, at=at)
    timer = ForwardTimer(derainer)
    try:
        dets = detect_all(yolo, frames, imgsz)
    finally:
        timer.close()
        detach_derain(yolo)
    return dets, timer.seconds / len(frames)


def main(argv: list[str] | None = None) -> int:
    shared = ROOT.parent / "shared"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(shared / "data" / "video" / "car-detection.mp4"))
    p.add_argument("--model", default=str(shared / "models" / "yolov5n-coco.torchscript"))
    p.add_argument("--weights", default="default")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--stride", type=int, default=6, help="every N-th frame (the clip's first seconds hold no car)")
    p.add_argument("--paper-frames", type=int, default=2)
    p.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    p.add_argument("--rain", default="light")
    p.add_argument("--conf", type=float, default=0.1, help="confidence of the clean frames' reference detections")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "derain-resolution")
    args = p.parse_args(argv)
    yolo = load_yolo(args.model, task="detect")
    rain = rain_fn(args.rain, 0)
    clean = list(read_frames(args.source, args.frames * args.stride))[::args.stride]
    rainy = [rain(f, str(i)) for i, f in enumerate(clean)]
    derainers = {"jdnet-lite": load_model(args.weights).eval()}
    if args.paper_frames > 0:
        derainers["jdnet (random weights)"] = create_model("jdnet").eval()
    names = dict(yolo.names) if getattr(yolo, "names", None) else {}
    rows = []
    for imgsz in args.imgsz:
        torch.set_num_threads(args.threads)  # Ultralytics drops torch to one thread on its first predict
        refs = detect_all(yolo, clean, imgsz)
        torch.set_num_threads(args.threads)
        score = {"clean": 1.0, "rainy": detections_map(detect_all(yolo, rainy, imgsz), refs, args.conf, names)["map50_95"]}
        for preset, derainer in derainers.items():
            n = len(rainy) if preset == "jdnet-lite" else args.paper_frames
            for at in ("frame", "input"):
                torch.set_num_threads(args.threads)
                dets, sec = timed_detect(yolo, derainer, rainy[:n], imgsz, at)
                m = detections_map(dets, refs[:n], args.conf, names)["map50_95"] if n == len(rainy) else None
                frac = None if m is None else (m - score["rainy"]) / (1.0 - score["rainy"])
                rows.append({"imgsz": imgsz, "preset": preset, "at": at, "frames": n, "derain_s_per_frame": sec,
                             "map50_95": m, "recovered_fraction": frac})
                print(rows[-1], flush=True)
        rows.append({"imgsz": imgsz, "preset": "-", "at": "rainy (no deraining)", "frames": len(rainy),
                     "derain_s_per_frame": 0.0, "map50_95": score["rainy"], "recovered_fraction": 0.0})
    h, w = clean[0].shape[:2]
    lines = [f"# Deraining the frame ({w}x{h}) or the detector's input", "",
             f"`python benchmarks/derain_resolution.py --frames {args.frames} --stride {args.stride} --imgsz "
             f"{' '.join(map(str, args.imgsz))} --threads {args.threads}`"
             f" on {Path(args.source).name} with `{args.rain}` rain added; mAP50-95 against the detections on the "
             f"clean frames (conf >= {args.conf}); {args.threads} threads, {describe_machine()}.", "",
             "| imgsz | derainer | derain at | frames | derain s/frame | vs frame | mAP50-95 | recovered fraction |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((q["derain_s_per_frame"] for q in rows if q["imgsz"] == r["imgsz"] and q["preset"] == r["preset"]
                     and q["at"] == "frame"), None)
        speed = f"{base / r['derain_s_per_frame']:.2f}x faster" if base and r["derain_s_per_frame"] else ""
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r['imgsz']} | {r['preset']} | {r['at']} | {r['frames']} | {r['derain_s_per_frame']:.3f} | "
                     f"{speed} | {fmt(r['map50_95'])} | {fmt(r['recovered_fraction'])} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resolution.json").write_text(json.dumps({"rows": rows, "machine": describe_machine()}, indent=1))
    (args.out / "resolution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
