"""Generalisation report of one deraining weights file: in-distribution rain against held-out rain.

    python eval_tasks/generalization.py --weights default --out runs/gen [--shared ../shared] [--quick] [--device cpu]

One run writes OUT/report.json, OUT/report.md, OUT/real_rainy_sheet.jpg (and the detection and segmentation
sub-reports with their plots under OUT/detection, OUT/segmentation), as ``../shared/docs/evaluation.md`` asks:

- restoration, PSNR / SSIM (Y as published, and RGB), rainy input and derained, mean over images:
  *in-distribution* = the project's own ``light`` and ``heavy`` rain (seed 0) on ``data/clean/Kodak24``;
  *held-out* = ``data/rain100L_test``;
- detection on COCO128 (YOLOv5n) and segmentation on CamVid val (ESPNet, Cityscapes -> CamVid map) with
  *transplanted* Rain100L test rain (``transplant:data/rain100L_test``, seed 0): clean / rainy / derained /
  clean-derained and the recovered fraction;
- a sheet of real rainy photographs (no ground truth): rainy | derained per row.

``--quick`` runs each part on the first few images only (the same code with an image limit). A part whose
inputs are missing is skipped with a note in the report; a bad ``--weights`` is an error.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdnet_plugin.eval_tasks.common import (
    TRANSPLANT, EvalError, cached_copy, cli_entry, derain_fn, files_fingerprint, load_derainer, map_image_tree,
    markdown_table, pick_device, rain_fn, rain_id, rain_label, write_report)
from jdnet_plugin.checkpoint import weights_file
from jdnet_plugin.metrics import PAIR_METRICS
from jdnet_plugin.registry import DEFAULT_WEIGHTS
from jdnet_plugin.utils.machine import cpu_model

__all__ = ["REAL_PHOTOS", "Limits", "FULL", "QUICK", "SharedPaths", "rainy_pairs", "restoration_section",
           "detection_section", "segmentation_section", "real_rainy_sheet", "generalization_report",
           "build_parser", "main"]

REPO = Path(__file__).resolve().parents[1]
SEED = 0
IN_DISTRIBUTION = ("light", "heavy")
SHEET = "real_rainy_sheet.jpg"
# Fixed real rainy photographs of ../shared/data/real_rainy shown on the sheet (481x321 each).
REAL_PHOTOS = ("50.png", "2.png", "11.png", "23.png", "62.png", "77.png", "90.png", "101.png")
SHEET_ROW_HEIGHT = 320
RESTORE_COLUMNS = PAIR_METRICS


@dataclass(frozen=True)
class Limits:
    """How many images of each set a run uses (None: all)."""

    kodak: int | None = None
    rain100L: int | None = None
    coco: int | None = None
    camvid: int | None = None
    real: int = len(REAL_PHOTOS)


FULL = Limits()
QUICK = Limits(kodak=4, rain100L=8, coco=8, camvid=8, real=2)


@dataclass(frozen=True)
class SharedPaths:
    """The inputs under ``../shared`` (or a folder laid out the same way)."""

    kodak: Path
    rain100L: Path
    coco_yaml: Path
    detector: Path
    camvid: Path
    segmenter: Path
    class_map: Path
    real_rainy: Path

    @classmethod
    def under(cls, shared: Path, detector: Path | None = None, segmenter: Path | None = None) -> "SharedPaths":
        data, models = shared / "data", shared / "models"
        return cls(kodak=data / "clean" / "Kodak24", rain100L=data / "rain100L_test",
                   coco_yaml=data / "coco128" / "coco128.yaml",
                   detector=detector or models / "yolov5n-coco.torchscript", camvid=data / "camvid_val",
                   segmenter=segmenter or models / "espnet-cityscapes.torchscript",
                   class_map=models / "cityscapes_to_camvid.json", real_rainy=data / "real_rainy")

    def transplant(self) -> str:
        return TRANSPLANT + str(self.rain100L.absolute())


def _missing(*paths: Path) -> str | None:
    """A skip note naming the missing inputs, or None when all are there."""
    missing = [str(p) for p in paths if not p.exists()]
    return f"skipped: not found: {', '.join(missing)}" if missing else None


# ----------------------------------------------------------------------------------------------- restoration
def rainy_pairs(clean_dir: Path, preset: str, seed: int, cache: Path, limit: int | None = None) -> Path:
    """A cached paired folder (``rain/`` + ``norain/``) of the first ``limit`` images of ``clean_dir`` with the
    rain ``python -m jdnet_plugin.synth`` adds to them (same per-file seed); the clean side is links."""
    from jdnet_plugin.io import list_images

    files = list_images(clean_dir)[:limit] if limit else list_images(clean_dir)
    if not files:
        raise EvalError(f"{clean_dir}: no images")
    key = {"task": "pairs", "source": str(clean_dir.resolve()), "fingerprint": files_fingerprint(files, clean_dir),
           **rain_id(preset), "seed": seed}

    def build(tmp: Path, final: Path) -> None:
        map_image_tree(files, clean_dir, tmp / "rain", rain_fn(preset, seed), f"rain ({preset})")
        map_image_tree(files, clean_dir, tmp / "norain", None, "clean")

    return cached_copy(cache, f"{clean_dir.name}-pairs-{rain_label(preset)}-s{seed}", key, build)[0]


def _restore_summary(res: dict, name: str, dataset: Path) -> dict[str, Any]:
    """``{"input", "derained", "gain" (derained - input), "images", "dataset"}`` of one restoration dataset."""
    methods = res["datasets"][name]
    inp = methods["input"]
    der = next(v for k, v in methods.items() if k != "input")
    return {"input": inp, "derained": der, "gain": {c: der[c] - inp[c] for c in RESTORE_COLUMNS},
            "images": res["images"][name], "dataset": str(dataset)}


def restoration_section(paths: SharedPaths, weights: str, cache: Path, limits: Limits, device: str | None,
                        tile: int | None, seed: int = SEED) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(in_distribution {preset: summary}, held_out {"rain100L": summary})``, skip notes where inputs lack."""
    from jdnet_plugin.eval_tasks.restore import restoration_results

    in_dist: dict[str, Any] = {}
    skip = _missing(paths.kodak)
    if skip:
        in_dist = {p: {"skipped": skip} for p in IN_DISTRIBUTION}
    else:
        folders = [rainy_pairs(paths.kodak, p, seed, cache, limits.kodak) for p in IN_DISTRIBUTION]
        res = restoration_results(folders, [weights], cache, device=device, tile=tile, max_images=limits.kodak,
                                  names=list(IN_DISTRIBUTION))
        in_dist = {p: {**_restore_summary(res, p, paths.kodak), "rain": p, "seed": seed} for p in IN_DISTRIBUTION}
    skip = _missing(paths.rain100L)
    if skip:
        return in_dist, {"rain100L": {"skipped": skip}}
    res = restoration_results([paths.rain100L], [weights], cache, device=device, tile=tile,
                              max_images=limits.rain100L, names=["rain100L"])
    return in_dist, {"rain100L": _restore_summary(res, "rain100L", paths.rain100L)}


# ----------------------------------------------------------------------------------------------- downstream tasks
def _downstream_summary(rep: dict, metrics: Sequence[str], headline: str, rel_report: str) -> dict[str, Any]:
    copies = ("clean", "rainy", "derained", "clean_derained")
    boot = rep["bootstrap"] or {"recovered_fraction": {}, "intervals": {}}
    return {**{c: {m: rep[c].get(m) for m in metrics} for c in copies if c in rep},
            "recovered_fraction": rep["recovered_fraction"][headline],
            "recovered_fraction_ci95": (boot["recovered_fraction"].get(headline) or {}).get("ci95"),
            "clean_cost_ci95": boot["intervals"].get(headline, {}).get("clean_cost"),
            "bootstrap": rep["bootstrap"] and {
                **{k: boot[k] for k in ("replicates", "seed", "images", "level")},
                "recovered_fraction": {headline: boot["recovered_fraction"].get(headline)}},
            "recovered_fraction_all": rep["recovered_fraction"], "headline_metric": headline,
            "clean_cost": rep.get("clean_cost", {}), "notes": rep["notes"], "report": rel_report}


def detection_section(paths: SharedPaths, weights: str, out: Path, cache: Path, limits: Limits,
                      device: str | None, tile: int | None, seed: int = SEED) -> dict[str, Any]:
    """COCO128 + YOLOv5n with transplanted Rain100L rain, through :func:`jdnet_plugin.eval_tasks.detect.detect_dataset`."""
    skip = _missing(paths.coco_yaml, paths.detector, paths.rain100L)
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        skip = skip or "skipped: ultralytics is not installed (pip install 'jdnet-plugin[ultralytics]')"
    if skip:
        return {"skipped": skip, "recovered_fraction": None}
    from jdnet_plugin.eval_tasks.detect import detect_dataset

    threads = torch.get_num_threads()
    try:
        rep = detect_dataset(paths.coco_yaml, str(paths.detector), weights, paths.transplant(), out / "detection",
                             cache=cache, seed=seed, device=device, tile=tile, derain_clean=True, limit=limits.coco)
    finally:
        torch.set_num_threads(threads)  # Ultralytics drops torch to one thread on a small machine
    return {**_downstream_summary(rep, ("map50", "map50_95"), "map50_95", "detection/report.json"),
            "rain": paths.transplant(), "seed": seed, "images": rep["config"]["images"],
            "data": str(paths.coco_yaml), "model": str(paths.detector)}


def segmentation_section(paths: SharedPaths, weights: str, out: Path, cache: Path, limits: Limits,
                         device: str | None, tile: int | None, seed: int = SEED) -> dict[str, Any]:
    """CamVid val + ESPNet (Cityscapes -> CamVid) with transplanted Rain100L rain, through
    :func:`jdnet_plugin.eval_tasks.segment.segment_dataset`."""
    images, masks = paths.camvid / "images", paths.camvid / "masks"
    skip = _missing(images, masks, paths.segmenter, paths.class_map, paths.rain100L)
    if skip:
        return {"skipped": skip, "recovered_fraction": None}
    from jdnet_plugin.eval_tasks.segment import segment_dataset

    names = paths.camvid / "classes.txt"
    rep = segment_dataset(images, masks, str(paths.segmenter), 11, weights, paths.transplant(),
                          out / "segmentation", class_map=str(paths.class_map),
                          class_names=str(names) if names.is_file() else None, ignore_index=11, cache=cache,
                          seed=seed, device=device, tile=tile, derain_clean=True, limit=limits.camvid)
    return {**_downstream_summary(rep, ("miou", "pixel_accuracy"), "miou", "segmentation/report.json"),
            "rain": paths.transplant(), "seed": seed, "images": rep["config"]["count"],
            "data": str(paths.camvid), "model": str(paths.segmenter)}


# ----------------------------------------------------------------------------------------------- real photos
def _sheet_row(panels: Sequence[np.ndarray], caption: str, height: int) -> np.ndarray:
    """One row: a caption strip over the panels side by side, each resized to ``height``."""
    import cv2

    h, w = panels[0].shape[:2]
    size = (max(1, round(w * height / h)), height)
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    gap = np.full((height, 6, 3), 255, np.uint8)
    parts = [cv2.resize(p, size, interpolation=interp) for p in panels]
    img = np.concatenate([x for p in parts for x in (p, gap)][:-1], axis=1)
    strip = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def real_rainy_sheet(folder: Path, names: Sequence[str], derain: Callable[[np.ndarray, str], np.ndarray]
                     | dict[str, Callable[[np.ndarray, str], np.ndarray]], path: Path,
                     height: int = SHEET_ROW_HEIGHT) -> list[str]:
    """Write the sheet of the photos ``names`` of ``folder`` to ``path`` (JPEG): per row rainy | derained, or
    rainy | one column per entry of a ``{label: derain}`` dict; return the names drawn."""
    from jdnet_plugin.io import read_rgb, write_rgb

    derains = derain if isinstance(derain, dict) else {"derained": derain}
    rows, drawn = [], []
    for name in names:
        f = folder / name
        if not f.is_file():
            continue
        rgb = read_rgb(f)
        rows.append(_sheet_row([rgb, *(fn(rgb, name) for fn in derains.values())],
                               f"{name}: " + " | ".join(["rainy", *derains]), height))
        drawn.append(name)
    if not rows:
        return []
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(path, np.concatenate(rows, axis=0), [1, 92])  # cv2.IMWRITE_JPEG_QUALITY: a sheet to look at, small
    return drawn


def real_photos_section(paths: SharedPaths, model: torch.nn.Module, out: Path, limits: Limits,
                        tile: int | None) -> dict[str, Any]:
    skip = _missing(paths.real_rainy)
    if skip:
        return {"skipped": skip, "sheet": None, "files": []}
    wanted = list(REAL_PHOTOS[:limits.real])
    drawn = real_rainy_sheet(paths.real_rainy, wanted, derain_fn(model, tile), out / SHEET)
    section: dict[str, Any] = {"sheet": SHEET if drawn else None, "files": drawn, "folder": str(paths.real_rainy)}
    if len(drawn) < len(wanted):
        section["notes"] = [f"not found in {paths.real_rainy}: {sorted(set(wanted) - set(drawn))}"]
    return section


# ----------------------------------------------------------------------------------------------- report
def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"host": platform.node(), "platform": platform.platform(), "processor": cpu_model(),
            "simd": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _timed(timing: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    try:
        return fn()
    finally:
        timing[name] = round(time.perf_counter() - start, 2)


def generalization_report(weights: str, out: Path, shared: Path, *, quick: bool = False, cache: Path | None = None,
                          device: str | None = None, tile: int | None = None, detector: Path | None = None,
                          segmenter: Path | None = None, seed: int = SEED) -> dict[str, Any]:
    """Run every part, write OUT/report.json, report.md and the sheet; return the report."""
    start, out = time.perf_counter(), Path(out).absolute()
    cache = Path(cache or out / "cache").absolute()
    wfile = weights_file(weights)  # a bad --weights is an error, before any work
    torch_device = pick_device(device)
    machine = machine_info(torch_device)
    model, wsha = load_derainer(wfile, torch_device)
    paths, limits = SharedPaths.under(Path(shared), detector, segmenter), QUICK if quick else FULL
    timing: dict[str, float] = {}
    in_dist, held_out = _timed(timing, "restoration", lambda: restoration_section(
        paths, str(wfile), cache, limits, device, tile, seed))
    detection = _timed(timing, "detection", lambda: detection_section(
        paths, str(wfile), out, cache, limits, device, tile, seed))
    segmentation = _timed(timing, "segmentation", lambda: segmentation_section(
        paths, str(wfile), out, cache, limits, device, tile, seed))
    real = _timed(timing, "real_photos", lambda: real_photos_section(paths, model, out, limits, tile))
    timing["total"] = round(time.perf_counter() - start, 2)
    report = {"weights": str(weights), "weights_file": str(Path(wfile).resolve()), "weights_sha256": wsha, "quick": quick,
              "seed": seed, "limits": asdict(limits), "shared": str(Path(shared).absolute()),
              "in_distribution": in_dist, "held_out": held_out, "detection": detection,
              "segmentation": segmentation, "real_photos": real, "machine": machine,
              "time_s": timing, "finished": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    write_report(out, report, render_markdown(report))
    return report


def _f(v: Any, digits: int = 2) -> str:
    return "-" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(ci: Sequence[float] | None) -> str:
    """`` [lo, hi] (95 % bootstrap over images) `` or nothing."""
    return f"[{_f(ci[0], 3)}, {_f(ci[1], 3)}] (95 % bootstrap interval over images) " if ci else ""


def _restore_md(section: dict[str, Any]) -> list[str]:
    rows, skipped = [], []
    for name, s in section.items():
        if "skipped" in s:
            skipped.append(f"- {name}: {s['skipped']}")
            continue
        i, d, g = s["input"], s["derained"], s["gain"]
        rows.append([name, s["images"], _f(i["psnr_y"]), _f(d["psnr_y"]), _f(g["psnr_y"], 2), _f(i["ssim_y"], 4),
                     _f(d["ssim_y"], 4), _f(i["psnr_rgb"]), _f(d["psnr_rgb"]), _f(d["ssim_rgb"], 4)])
    headers = ["rain", "images", "input PSNR-Y", "derained PSNR-Y", "gain (dB)", "input SSIM-Y", "derained SSIM-Y",
               "input PSNR-RGB", "derained PSNR-RGB", "derained SSIM-RGB"]
    return ([markdown_table(headers, rows)] if rows else []) + skipped


def _downstream_md(s: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    if "skipped" in s:
        return [f"- {s['skipped']}"]
    copies = [c for c in ("clean", "rainy", "derained", "clean_derained") if c in s]
    lines = [markdown_table(["copy", *metrics], [[c, *(_f(s[c].get(m), 4) for m in metrics)] for c in copies]), "",
             f"**recovered fraction of {s['headline_metric']}: {_f(s['recovered_fraction'], 3)}** "
             f"{_ci(s.get('recovered_fraction_ci95'))}(derained - rainy) / (clean - rainy); all: " + ", ".join(
                 f"{m} {_f(v, 3)}" for m, v in s["recovered_fraction_all"].items()),
             f"images: {s['images']}, rain: `{s['rain']}` (seed {s['seed']}), details: `{s['report']}`"]
    return lines + [f"- note: {n}" for n in s["notes"]]


def render_markdown(r: dict[str, Any]) -> str:
    real = r["real_photos"]
    md = [f"# Generalisation of `{r['weights']}`", "",
          f"weights file `{r['weights_file']}` (sha256 {r['weights_sha256'][:12]}), "
          f"{'QUICK subset' if r['quick'] else 'full sets'}, seed {r['seed']}. PSNR/SSIM: Y = BT.601 luma as "
          "published tables, RGB as the JDNet authors; mean over images.", "",
          "## In-distribution: the project's own synthetic rain on Kodak24", "", *_restore_md(r["in_distribution"]),
          "", "## Held-out rain: Rain100L test (another generator's rain)", "", *_restore_md(r["held_out"]), "",
          "## Held-out rain on labelled images: detection, COCO128, YOLOv5n, transplanted Rain100L test rain", "",
          *_downstream_md(r["detection"], ("map50", "map50_95")), "",
          "## Held-out rain on labelled images: segmentation, CamVid val, ESPNet (Cityscapes -> CamVid), "
          "transplanted Rain100L test rain", "", *_downstream_md(r["segmentation"], ("miou", "pixel_accuracy")), "",
          "## Held-out, real rain without ground truth: photographs", ""]
    if real.get("sheet"):
        md += [f"![rainy | derained]({real['sheet']})", "", "files: " + ", ".join(real["files"])]
    md += [f"- {real['skipped']}"] if "skipped" in real else []
    md += [f"- note: {n}" for n in real.get("notes", [])]
    m = r["machine"]
    md += ["", "## Machine and time", "",
           f"{m['host']}: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device "
           f"{m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']}.",
           "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["time_s"].items()) + f" (finished {r['finished']})"]
    return "\n".join(md)


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_tasks/generalization.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="deraining checkpoint or registered weights name (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.json, report.md, pictures)")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                   help="the shared data and models folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="the first few images of each set only (a smoke test)")
    p.add_argument("--cache", type=Path, default=None, help="where image copies and results are kept (OUT/cache)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--tile", type=int, default=None, help="derain in tiles of this size (big images)")
    p.add_argument("--seed", type=int, default=SEED, help="rain seed (default: %(default)s)")
    p.add_argument("--detector", type=Path, default=None, help="detector instead of SHARED/models/yolov5n")
    p.add_argument("--segmenter", type=Path, default=None, help="segmenter instead of SHARED/models/espnet")
    return p


def _run(args: argparse.Namespace) -> int:
    report = generalization_report(args.weights, args.out, args.shared, quick=args.quick, cache=args.cache,
                                   device=args.device, tile=args.tile, detector=args.detector,
                                   segmenter=args.segmenter, seed=args.seed)
    print(Path(args.out, "report.md").read_text())
    print(f"report: {Path(args.out).absolute() / 'report.json'} ({report['time_s']['total']:.1f} s)")
    return 0


main = cli_entry(_run, build_parser)


if __name__ == "__main__":
    sys.exit(main())
