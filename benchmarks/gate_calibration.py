"""Calibrate the rain gate: rain scores of clean and rainy images, and what each threshold passes.

    python benchmarks/gate_calibration.py [--weights default] [--shared ../shared] [--per-set 40] [--out DIR]

Images (never one set only): COCO128 and CamVid val, clean, with the project's own ``light`` rain, and with
Rain100L's rain transplanted (``../shared/docs/evaluation.md``); Rain100L test's clean backgrounds and its rainy
images; the real rainy photos. For each candidate threshold: the share of clean images passed through and of
rainy images derained, per set. The suggested threshold maximises the mean of the two over all sets (balanced
accuracy); :data:`jdnet_plugin.gate.AUTO_THRESHOLD` is set from it. Writes ``gate.json`` and ``gate.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jdnet_plugin.eval_tasks.common import rain_fn, transplant_fn  # noqa: E402
from jdnet_plugin import load_model  # noqa: E402
from jdnet_plugin.gate import AUTO_THRESHOLD  # noqa: E402
from jdnet_plugin.inference import rain_score  # noqa: E402
from jdnet_plugin.registry import get_weights, list_weights  # noqa: E402
from jdnet_plugin.io import IMAGE_EXTENSIONS, read_image  # noqa: E402
from jdnet_plugin.utils.machine import describe_machine  # noqa: E402

THRESHOLDS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def _images(folder: Path, n: int) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"error: {folder} holds no images")
    return files[:: max(1, len(files) // n)][:n]


def _rgb8(path: Path) -> np.ndarray:
    a = read_image(path)
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    return (a // 257).astype(np.uint8) if a.dtype == np.uint16 else a


def _score(model, rgb: np.ndarray) -> float:
    return float(rain_score(model, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255))


def score_sets(model, shared: Path, per_set: int) -> dict[str, dict]:
    data = shared / "data"
    light, r100l = rain_fn("light", 0), transplant_fn(data / "rain100L_test", 0)
    sets: dict[str, dict] = {}
    for name, folder in (("COCO128", data / "coco128" / "images"), ("CamVid val", data / "camvid_val" / "images")):
        files = _images(folder, per_set)
        for kind, fn in (("clean", None), ("own light rain", light), ("Rain100L rain (transplanted)", r100l)):
            scores = [_score(model, fn(_rgb8(f), str(f)) if fn else _rgb8(f)) for f in files]
            sets[f"{name}, {kind}"] = {"rainy": fn is not None, "scores": scores}
    for kind, sub in (("clean", "norain"), ("rainy", "rain")):
        files = _images(data / "rain100L_test" / sub, per_set)
        sets[f"Rain100L test, {kind}"] = {"rainy": kind == "rainy", "scores": [_score(model, _rgb8(f)) for f in files]}
    files = _images(data / "real_rainy", per_set)
    sets["real rainy photos (not used to choose)"] = {"rainy": None, "scores": [_score(model, _rgb8(f)) for f in files]}
    return sets


def _right(s: dict, t: float) -> float:
    a = np.asarray(s["scores"])
    return float((a >= t).mean() if s["rainy"] is not False else (a < t).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--per-set", type=int, default=40, help="images per set (spread over the folder)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/gate/<weights name>")
    args = p.parse_args(argv)
    if args.out is None:
        registered = args.weights in list_weights()
        name = get_weights(args.weights).name.split(".", 1)[1] if registered else Path(args.weights).stem
        args.out = ROOT / "benchmarks" / "results" / "gate" / name
    model = load_model(args.weights).eval()
    sets = score_sets(model, args.shared, args.per_set)
    labelled = [s for s in sets.values() if s["rainy"] is not None]
    balanced = {t: float(np.mean([_right(s, t) for s in labelled])) for t in THRESHOLDS}
    best = max(THRESHOLDS, key=lambda t: balanced[t])
    head = "| set | images | score median [5 %, 95 %] | " + " | ".join(f"t={t}" for t in THRESHOLDS) + " |"
    lines = [f"# Rain gate calibration ({args.weights})", "",
             "Share derained (rainy sets) or passed through untouched (clean sets) at each threshold t "
             f"(score: `jdnet_plugin.inference.rain_score`). Suggested: t={best} (balanced accuracy "
             f"{balanced[best]:.3f}); `gate=\"auto\"` uses {AUTO_THRESHOLD}. Real photos: share derained.", "",
             head, "|" + "---|" * (len(THRESHOLDS) + 3)]
    for name, s in sets.items():
        a = np.asarray(s["scores"])
        cells = [f"{_right(s, t):.2f}" for t in THRESHOLDS]
        lines.append(f"| {name} | {len(a)} | {np.median(a):.2f} [{np.percentile(a, 5):.2f}, "
                     f"{np.percentile(a, 95):.2f}] | " + " | ".join(cells) + " |")
    lines.append("| balanced accuracy | | | " + " | ".join(f"{balanced[t]:.3f}" for t in THRESHOLDS) + " |")
    lines += ["", f"Command: `python benchmarks/gate_calibration.py --weights {args.weights} --per-set "
                  f"{args.per_set}`; {describe_machine()}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate.json").write_text(json.dumps({"weights": args.weights, "suggested": best,
                                                    "auto": AUTO_THRESHOLD, "balanced": balanced, "sets": sets},
                                                   indent=1))
    (args.out / "gate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
