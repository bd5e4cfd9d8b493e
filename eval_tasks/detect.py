"""Detection with and without deraining, measured with Ultralytics' own metrics.

Dataset mode (labelled YOLO dataset, three copies: clean, rainy, derained)::

    python eval_tasks/detect.py --data coco128.yaml --model yolov5n.torchscript --weights jdnet.pt \
        --rain light --out runs/detect-light

Footage mode (a video, image folder or stream; no labels)::

    python eval_tasks/detect.py --source clip.mp4 --model yolov5n.torchscript --weights jdnet.pt \
        --out runs/footage [--add-rain heavy] [--max-frames 100] [--gate auto]

With ``--add-rain`` the footage is taken as clean and rain is synthesised on it; the detections on the clean
frames are then the reference for mAP of the detections on the rainy and derained frames.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from jdnet_plugin.eval_tasks.common import (
    EvalError, add_common_args, cached_copy, check_limit, cli_entry, derain_fn, digest, files_fingerprint,
    finish_report, gate_report, gated_copies, image_rain_score, load_derainer, map_image_tree, pick_device, rain_fn,
    rain_id, rain_label, recovered_fraction, resolve_gate_arg, sha256_file, to_jsonable, TRANSPLANT)
from jdnet_plugin.eval_tasks.bootstrap import (
    REPLICATES, add_bootstrap_arg, bootstrap_section, cached_detection_replicates, check_draws, resample_counts)
from jdnet_plugin.integrations.ultralytics_hook import DERAIN_AT
from jdnet_plugin.gate import GATE_VERSION
from jdnet_plugin.utils.atomic import atomic_path, atomic_write_text

__all__ = ["YoloDataset", "read_yolo_dataset", "limit_dataset", "build_detection_copies", "val_metrics",
           "detect_dataset", "evaluate_dataset",
           "evaluate_footage", "detect_footage", "FootageRun", "detections_map", "build_parser", "main"]

METRICS = ("map50", "map50_95")


# ----------------------------------------------------------------------------------------------- dataset mode
@dataclass
class YoloDataset:
    """The validation split of a YOLO dataset YAML: images, their label files, class names."""

    yaml_path: Path
    root: Path
    names: dict[int, str]
    images: list[Path]
    labels: list[Path]  # existing label files, under root
    entries: list[str]  # the YAML's val entries, relative to root
    list_files: dict[str, list[Path]] = field(default_factory=dict)  # val entries that are .txt image lists


def _img_formats() -> set[str]:
    from ultralytics.data.utils import IMG_FORMATS

    return set(IMG_FORMATS)


def _inside(path: Path, root: Path, what: str) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        raise EvalError(f"{what} {path} is outside the dataset root {root}; copies need everything under it") \
            from None


def _checked_dataset(yaml_path: Path, split: str) -> dict[str, Any]:
    """Ultralytics' own ``check_det_dataset`` (what ``YOLO.val`` reads; no dataset download), with the
    ``split`` checked here (older 8.3 releases have no ``split`` argument); its complaints become
    :class:`EvalError` naming the file."""
    from ultralytics.data.utils import check_det_dataset

    if not yaml_path.is_file():
        raise FileNotFoundError(f"dataset YAML {yaml_path} not found")
    try:
        data = check_det_dataset(str(yaml_path), autodownload=False)
    except (SyntaxError, TypeError, ValueError, OSError, yaml.YAMLError) as e:
        message = " ".join("".join(c for c in str(e) if c.isascii()).split())  # one line, without emojis
        raise EvalError(f"{yaml_path}: {message}") from None
    if not data.get(split):
        raise EvalError(f"{yaml_path}: no '{split}' key naming the images to evaluate")
    return data


def _split_images(entry: Path, root: Path, lists: dict[str, list[Path]]) -> list[Path]:
    """The images of one split entry: a folder (searched recursively) or a text file listing images."""
    if entry.is_dir():
        return sorted(f for f in entry.rglob("*") if f.is_file() and f.suffix[1:].lower() in _img_formats())
    found = []
    for line in entry.read_text(encoding="utf-8-sig").split():
        f = entry.parent / line[2:] if line.startswith("./") else Path(line)
        found.append(f if f.is_absolute() else root / f)
    lists[_inside(entry, root, "image list").as_posix()] = found
    return found


def _check_labels(labels: list[Path], root: Path, nc: int, yaml_path: Path) -> None:
    for lab in labels:
        _inside(lab, root, "label file")
        for i, line in enumerate(lab.read_text(encoding="utf-8").splitlines()):
            cls = line.split()[0] if line.strip() else None
            if cls is not None and (not cls.lstrip("-").isdigit() or not 0 <= int(cls) < nc):
                raise EvalError(f"{lab}:{i + 1}: class {cls!r} is not in 0..{nc - 1} ({nc} names in {yaml_path})")


def read_yolo_dataset(path: str | os.PathLike, split: str = "val") -> YoloDataset:
    """The ``split`` of a dataset YAML as Ultralytics reads it (``check_det_dataset``: root, names, entries),
    with its images and label files, checked: everything under the root, every label's class named."""
    from ultralytics.data.utils import img2label_paths

    yaml_path = Path(path)
    data = _checked_dataset(yaml_path, split)
    names = {int(k): str(v) for k, v in data["names"].items()}
    root = Path(data["path"]).resolve()  # as check_det_dataset resolves the entries
    if not root.is_dir():
        raise EvalError(f"{yaml_path}: dataset root {root} is not a folder")
    entries = [Path(e) for e in (data[split] if isinstance(data[split], list) else [data[split]])]
    images, rel_entries, lists = [], [], {}
    for e in entries:
        images += _split_images(e, root, lists)
        rel_entries.append(_inside(e, root, f"'{split}' entry").as_posix())
    if not images:
        raise EvalError(f"{yaml_path}: no images in '{split}' ({', '.join(map(str, entries))})")
    for f in images:
        _inside(f, root, "image")
        if not f.is_file():
            raise EvalError(f"{yaml_path}: image {f} does not exist")
    labels = [p for p in map(Path, img2label_paths([str(f) for f in images])) if p.is_file()]
    if not labels:
        example = img2label_paths([str(images[0])])[0]
        raise EvalError(f"{yaml_path}: dataset with no labels: none of the {len(images)} '{split}' images has a "
                        f"label file (YOLO looks for e.g. {example})")
    _check_labels(labels, root, len(names), yaml_path)
    return YoloDataset(yaml_path, root, names, images, labels, rel_entries, lists)


def _copy_builder(ds: YoloDataset, fn, src_root: Path, desc: str):
    """``build(tmp, final)`` for :func:`cached_copy`: images through ``fn`` (read from ``src_root``, a copy with
    the same layout, or the source), labels copied, a ``data.yaml`` pointing at the final folder."""

    def build(tmp: Path, final: Path) -> None:
        files = [src_root / f.relative_to(ds.root) for f in ds.images]
        map_image_tree(files, src_root, tmp, fn, desc=desc)
        for lab in ds.labels:
            dst = tmp / lab.relative_to(ds.root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lab, dst)
        for rel, listed in ds.list_files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text("".join(f"{final / f.relative_to(ds.root)}\n" for f in listed), encoding="utf-8")
        spec = {"path": str(final), "train": ds.entries, "val": ds.entries, "nc": len(ds.names), "names": ds.names}
        (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")

    return build


def build_detection_copies(ds: YoloDataset, cache: Path, rain: str, seed: int, derainer: torch.nn.Module | None,
                           weights_sha: str | None, tile: int | None = None, derain_clean: bool = False,
                           rain_scale: str = "1", gate: float | None = None) -> dict[str, tuple[Path, bool]]:
    """``{copy: (folder, reused)}`` for clean (links), rainy, derained (and clean_derained; with a ``gate``
    threshold also derained_gated, clean_derained_gated)."""
    source = {"yaml": str(ds.yaml_path.resolve()),
              "fingerprint": files_fingerprint([*ds.images, *ds.labels, ds.yaml_path.resolve()], Path("/"))}
    stem = ds.yaml_path.stem
    out = {"clean": cached_copy(cache, f"{stem}-clean", {"task": "detect", **source},
                                _copy_builder(ds, None, ds.root, "clean copy"))}
    rain_key = {"task": "detect", **source, **rain_id(rain), "seed": seed, "scale": str(rain_scale)}
    label = rain_label(rain)
    rainy = cached_copy(cache, f"{stem}-rainy-{label}-s{seed}", rain_key,
                        _copy_builder(ds, rain_fn(rain, seed, rain_scale), ds.root, f"rain ({label})"))
    out["rainy"] = rainy
    if derainer is not None:
        derain_key = {**rain_key, "weights": weights_sha, "tile": tile}
        out["derained"] = cached_copy(cache, f"{stem}-derained-{label}-s{seed}", derain_key,
                                      _copy_builder(ds, derain_fn(derainer, tile), rainy[0], "derain"))
        clean_key = {"task": "detect", **source, "weights": weights_sha, "tile": tile}
        if derain_clean:
            out["clean_derained"] = cached_copy(cache, f"{stem}-clean-derained", clean_key,
                                                _copy_builder(ds, derain_fn(derainer, tile), ds.root, "derain clean"))
        sources = {"derained_gated": (f"{stem}-derained-{label}-s{seed}", derain_key, rainy[0], out["derained"][0])}
        if derain_clean:
            sources["clean_derained_gated"] = (f"{stem}-clean-derained", clean_key, ds.root, out["clean_derained"][0])
        out.update(gated_copies(cache, gate, derainer, tile, sources,
                                lambda src, tmp, final, fn, desc: _copy_builder(ds, fn, src, desc)(tmp, final)))
    return out


def _check_model_file(path: str) -> None:
    if Path(path).suffix.lower() not in (".yaml", ".yml") and not Path(path).is_file():
        raise FileNotFoundError(f"detector {path} not found")


def _load_detector(path: str):
    _check_model_file(path)
    from jdnet_plugin.integrations import load_yolo

    return load_yolo(path, task="detect")


class PerImageMatches:
    """An ``on_val_batch_end`` callback keeping what Ultralytics' validator matched on each image (its
    ``DetMetrics.stats`` rows, which it clears when it scores the set), by image name."""

    KEYS = ("tp", "conf", "pred_cls", "target_cls")

    def __init__(self) -> None:
        self.rows: list[dict[str, np.ndarray]] = []
        self.names: list[str] = []

    def __call__(self, validator) -> None:
        stats = validator.metrics.stats
        for i in range(len(self.rows), len(stats["tp"])):
            self.rows.append({k: np.asarray(stats[k][i]) for k in self.KEYS})
        self.names = list(getattr(validator.metrics.box, "image_metrics", {}))

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows sorted by image name, concatenated, with ``pred_image`` / ``target_image`` indices."""
        names = self.names if len(self.names) == len(self.rows) else [f"{i:06d}" for i in range(len(self.rows))]
        order = sorted(range(len(self.rows)), key=names.__getitem__)
        rows = [self.rows[i] for i in order]
        out = {k: np.concatenate([r[k] for r in rows]) if rows else np.zeros(0) for k in self.KEYS}
        out["tp"] = (out["tp"] if out["tp"].ndim == 2 else out["tp"].reshape(0, 0)).astype(bool)
        for what, key in (("pred_image", "conf"), ("target_image", "target_cls")):
            out[what] = np.repeat(np.arange(len(rows)), [len(r[key]) for r in rows])
        out["names"] = np.array([names[i] for i in order])
        return out


def val_metrics(yolo, data_yaml: Path, names: dict[int, str], project: Path, name: str, imgsz: int, batch: int,
                device: str | None, workers: int = 0, matches: PerImageMatches | None = None) -> dict[str, Any]:
    """``YOLO.val`` on one copy: ``{"map50", "map50_95", "per_class": {name: {"map50", "map50_95"}}}``;
    ``matches`` collects the per-image matches."""
    kwargs = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, project=str(project.absolute()), name=name,
                  exist_ok=True, plots=False, verbose=False, workers=workers, save_json=False)
    if device:
        kwargs["device"] = device
    if matches is not None:
        yolo.add_callback("on_val_batch_end", matches)
    try:
        m = yolo.val(**kwargs)
    finally:
        if matches is not None:
            yolo.callbacks["on_val_batch_end"].remove(matches)
    box = m.box
    per_class = {}
    for j, c in enumerate(np.asarray(box.ap_class_index).tolist()):
        per_class[names.get(int(c), str(c))] = {"map50": float(box.ap50[j]), "map50_95": float(box.ap[j])}
    return {"map50": float(box.map50), "map50_95": float(box.map), "per_class": per_class}


def _model_names(yolo) -> dict[int, str] | None:
    names = getattr(yolo, "names", None)
    return dict(names) if names else None


def limit_dataset(ds: YoloDataset, limit: int | None) -> YoloDataset:
    """The first ``limit`` images of ``ds`` (with their labels); ``ds`` itself when ``limit`` is None or 0."""
    check_limit(limit)
    if not limit or limit >= len(ds.images):
        return ds
    from ultralytics.data.utils import img2label_paths

    images = ds.images[:limit]
    wanted = {Path(p) for p in img2label_paths([str(f) for f in images])}
    labels = [lab for lab in ds.labels if lab in wanted]
    if not labels:
        raise EvalError(f"{ds.yaml_path}: none of the first {limit} images has a label file")
    kept = set(images)
    lists = {rel: [f for f in listed if f in kept] for rel, listed in ds.list_files.items()}
    return replace(ds, images=images, labels=labels, list_files=lists)


def _check_class_count(yolo, ds: YoloDataset, model: str, data: str | os.PathLike) -> None:
    model_names = _model_names(yolo)
    if model_names is not None and len(model_names) != len(ds.names):
        raise EvalError(f"class-count mismatch: detector {model} has {len(model_names)} classes, "
                        f"{data} names {len(ds.names)}")


@dataclass(frozen=True)
class InputDeraining:
    """Val of a copy with the derainer attached at the network input (``attach_derain(at="input")``)."""

    derainer: torch.nn.Module
    weights_sha: str
    tile: int | None = None
    gate: float | None = None

    def key(self) -> dict[str, Any]:
        return {"at": "input", "weights": self.weights_sha, "tile": self.tile, "gate": self.gate,
                "gate_version": GATE_VERSION}


def _val_copies(yolo, copies: dict[str, tuple[Path, bool]], ds: YoloDataset, cache: Path, out: Path, model: str,
                imgsz: int, batch: int, device: str | None, workers: int,
                hooked: dict[str, InputDeraining] | None = None
                ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """``({copy: val_metrics}, {copy: per-image matches})``, each cached in ``cache`` by (copy folder, model,
    imgsz, batch, device, and for the copies in ``hooked`` the deraining at the network input; their results
    hold the gate's counts)."""
    from jdnet_plugin.integrations import attach_derain, detach_derain
    from jdnet_plugin.integrations.ultralytics_hook import derain_gate_stats

    model_id = sha256_file(model) if Path(model).is_file() else str(model)
    results, per_image = {}, {}
    for copy, (folder, _) in copies.items():
        hook = (hooked or {}).get(copy)
        key = {"copy": folder.name, "model": model_id, "imgsz": imgsz, "batch": batch, "device": str(device),
               **({"derain": hook.key()} if hook else {})}
        mfile = cache / f"metrics-{copy}-{digest(key, 12)}.json"
        pfile = mfile.with_suffix(".npz")
        if mfile.is_file() and pfile.is_file():  # older versions kept no per-image matches: measured again
            results[copy] = json.loads(mfile.read_text())
            with np.load(pfile) as z:
                per_image[copy] = dict(z)
            continue
        if hook:
            attach_derain(yolo, model=hook.derainer, tile=hook.tile, gate=hook.gate, at="input")
        matches = PerImageMatches()
        try:
            results[copy] = val_metrics(yolo, folder / "data.yaml", ds.names, out / "val", copy, imgsz, batch,
                                        device, workers, matches)
            if hook and hook.gate is not None:
                stats = derain_gate_stats(yolo)
                results[copy]["gate"] = {"threshold": hook.gate, "derained": stats.derained, "passed": stats.passed}
        finally:
            detach_derain(yolo)
        per_image[copy] = matches.arrays()
        if len(per_image[copy]["names"]) != len(ds.images):
            raise EvalError(f"{folder}: the validator matched {len(per_image[copy]['names'])} images, the dataset "
                            f"lists {len(ds.images)}")
        with atomic_path(pfile) as tmp, open(tmp, "wb") as f:
            np.savez(f, **per_image[copy])
        atomic_write_text(mfile, json.dumps(results[copy]))
    return results, per_image


def detect_dataset(data: str | os.PathLike, model: str, weights: str | os.PathLike, rain: str, out: Path, *,
                   cache: Path | None = None, seed: int = 0, rain_scale: str = "1", device: str | None = None,
                   tile: int | None = None, imgsz: int = 640, batch: int = 1, workers: int = 0,
                   derain_clean: bool = False, limit: int | None = None, gate: str | float | None = None,
                   derain_at: str = "frame", bootstrap: int = REPLICATES) -> dict[str, Any]:
    """Detection mAP of the clean, rainy and derained copies of the dataset YAML ``data`` (its first ``limit``
    images), with the recovered fraction; writes report.json, report.md and plot.png to ``out`` and returns
    the report. ``rain`` is a preset or ``transplant:DIR`` (see :func:`jdnet_plugin.eval_tasks.common.rain_fn`);
    ``gate`` ("auto" or a threshold) adds copies derained with the rain gate (see :func:`gate_report`).
    ``derain_at="input"``: instead of derained copies of the images (each at its own resolution), the rainy
    and clean copies are validated with the derainer attached to the detector's letterboxed input.
    ``bootstrap``: draws of the images for the intervals (:mod:`jdnet_plugin.eval_tasks.bootstrap`; 0: none)."""
    out = Path(out).absolute()
    cache = Path(cache or out / "cache").absolute()
    model = str(model)
    _check_model_file(model)
    ds = limit_dataset(read_yolo_dataset(data), limit)
    rain_fn(rain, seed, rain_scale)  # a bad preset, folder or scale fails before any work
    gate = resolve_gate_arg(gate)
    check_draws(bootstrap)
    derainer, wsha = load_derainer(weights, pick_device(device))
    yolo = _load_detector(model)
    _check_class_count(yolo, ds, model, data)
    if derain_at not in DERAIN_AT:
        raise EvalError(f"derain_at must be one of {', '.join(DERAIN_AT)}, got {derain_at!r}")
    hooked: dict[str, InputDeraining] = {}
    if derain_at == "frame":
        copies = build_detection_copies(ds, cache, rain, seed, derainer, wsha, tile, derain_clean, rain_scale, gate)
    else:
        copies = build_detection_copies(ds, cache, rain, seed, None, wsha, tile, False, rain_scale)
        for suffix, g in [("", None)] + ([("_gated", gate)] if gate is not None else []):
            for name, base in [("derained", "rainy")] + ([("clean_derained", "clean")] if derain_clean else []):
                copies[name + suffix] = copies[base]
                hooked[name + suffix] = InputDeraining(derainer, wsha, tile, g)
    results, per_image = _val_copies(yolo, copies, ds, cache, out, model, imgsz, batch, device, workers, hooked)
    fraction, notes = recovered_fraction(results["clean"], results["rainy"], results["derained"], METRICS)
    counts = resample_counts(len(ds.images), bootstrap)
    boot = bootstrap_section([Path(f).name for f in ds.images],
                             {c: cached_detection_replicates(v, counts, cache) for c, v in per_image.items()},
                             METRICS)
    report = {
        **{c: {m: results[c][m] for m in METRICS} for c in results},
        "recovered_fraction": fraction,
        **gate_report(results, copies, METRICS),
        "bootstrap": boot,
        "notes": notes,
        "per_class": {c: results[c]["per_class"] for c in results},
        "config": {"mode": "dataset", "data": str(Path(data).resolve()), "model": model,
                   "weights": str(weights), "weights_sha256": wsha, "rain": rain, "rain_scale": rain_scale,
                   "seed": seed, "imgsz": imgsz, "batch": batch, "images": len(ds.images), "limit": limit,
                   "derain_at": derain_at,
                   "metrics": "Ultralytics DetectionValidator (YOLO.val)"},
        "copies": {c: str(folder) for c, (folder, _) in copies.items()},
        "copies_reused": {c: was_cached for c, (_, was_cached) in copies.items()},
    }
    finish_report(out, report, "Detection", METRICS, "map50_95",
                  {c: {k: v["map50_95"] for k, v in results[c]["per_class"].items()} for c in results})
    return report


def evaluate_dataset(args: argparse.Namespace) -> int:
    """The CLI's dataset mode: :func:`detect_dataset` with the parsed arguments."""
    detect_dataset(args.data, args.model, args.weights, args.rain, args.out, cache=args.cache, seed=args.seed,
                   rain_scale=args.rain_scale, device=args.device, tile=args.tile, imgsz=args.imgsz,
                   batch=args.batch, workers=args.workers, derain_clean=args.derain_clean,
                   limit=args.max_images, gate=args.gate, derain_at=args.derain_at, bootstrap=args.bootstrap)
    return 0


# ----------------------------------------------------------------------------------------------- footage mode
def _iter_frames(source: str, max_frames: int | None) -> tuple[Iterator[tuple[str, np.ndarray]], float, int | None]:
    """``(frames as (name, RGB uint8), fps, count or None)`` of a video file, image folder or stream."""
    from jdnet_plugin.io import list_images, read_rgb
    from jdnet_plugin.video import is_stream, read_frames, video_info

    path = Path(source)
    limit = max_frames if max_frames and max_frames > 0 else None
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise EvalError(f"{path}: no images in this folder")
        files = files[:limit] if limit else files

        def gen_files():
            for f in files:
                yield f.name, read_rgb(f)

        return gen_files(), 10.0, len(files)
    if not is_stream(source) and not path.is_file():
        raise FileNotFoundError(f"footage {source} not found")
    info = video_info(source)
    count = (min(info.frames, limit) if limit else info.frames) if info.frames > 0 else limit
    frames = ((f"{i:06d}", rgb) for i, rgb in enumerate(read_frames(source, limit)))
    return frames, info.fps or 10.0, count


@dataclass(frozen=True)
class FootageRun:
    """What footage mode reads and how: the keyword arguments of :func:`detect_footage`."""

    source: str
    add_rain: str | None = None
    max_frames: int | None = None
    seed: int = 0
    rain_scale: str = "1"
    tile: int | None = None
    imgsz: int = 640
    device: str | None = None
    conf: float = 0.25
    gate: float | None = None


def _detect(yolo, rgb: np.ndarray, run: FootageRun):
    """Ultralytics Results of one RGB frame, at the low confidence threshold mAP needs."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    kw = dict(imgsz=run.imgsz, conf=0.001, iou=0.7, max_det=300, verbose=False)
    if run.device:
        kw["device"] = run.device
    return yolo.predict(bgr, **kw)[0]


def _dets(result) -> dict[str, np.ndarray]:
    b = result.boxes
    return {"xyxy": b.xyxy.cpu().numpy().astype(np.float32), "conf": b.conf.cpu().numpy().astype(np.float32),
            "cls": b.cls.cpu().numpy().astype(np.int64)}


def detections_map(preds: Sequence[dict[str, np.ndarray]], refs: Sequence[dict[str, np.ndarray]],
                   ref_conf: float, names: dict[int, str] | None = None, save_dir: Path | None = None
                   ) -> dict[str, Any]:
    """mAP50 / mAP50-95 of per-frame detections against reference detections (those with
    ``conf >= ref_conf`` count as ground truth), with Ultralytics' matching and ``ap_per_class``."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import Metric, ap_per_class, box_iou

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        validator = DetectionValidator(save_dir=Path(save_dir or tmp))
    validator.iouv = torch.linspace(0.5, 0.95, 10)
    tps, confs, pcls, tcls = [], [], [], []
    for p, r in zip(preds, refs):
        keep = r["conf"] >= ref_conf
        t_box, t_cls = torch.from_numpy(r["xyxy"][keep]), torch.from_numpy(r["cls"][keep])
        order = np.argsort(-p["conf"], kind="stable")
        p_box, p_cls = torch.from_numpy(p["xyxy"][order]), torch.from_numpy(p["cls"][order])
        if len(p_cls) and len(t_cls):
            tp = validator.match_predictions(p_cls, t_cls, box_iou(t_box, p_box)).numpy()
        else:
            tp = np.zeros((len(p_cls), 10), dtype=bool)
        tps.append(tp)
        confs.append(p["conf"][order])
        pcls.append(p["cls"][order])
        tcls.append(r["cls"][keep])
    target = np.concatenate(tcls) if tcls else np.zeros(0, np.int64)
    if target.size == 0:
        return {"map50": None, "map50_95": None, "per_class": {}, "reference_objects": 0}
    box = Metric()  # Ultralytics' own metrics object, read by name
    box.update(ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), target,
                            names=names or {})[2:])  # [2:]: what DetMetrics.process hands to Metric.update
    per_class = {(names or {}).get(int(c), str(int(c))): {"map50": float(box.all_ap[j, 0]),
                                                          "map50_95": float(box.all_ap[j].mean())}
                 for j, c in enumerate(box.ap_class_index)}
    return {"map50": float(box.map50), "map50_95": float(box.map), "per_class": per_class,
            "reference_objects": int(target.size)}


def _frame_cache(cache: Path, run: FootageRun, wsha: str, derainer) -> tuple[Path, bool]:
    """A folder with the footage's frames as PNG: ``clean/`` (with --add-rain), ``rainy/``, ``derained/``."""
    src = Path(run.source)
    source_id = {"source": str(src.resolve()) if src.exists() else run.source}
    if src.is_file():
        st = src.stat()
        source_id.update(size=st.st_size, mtime=st.st_mtime_ns)
    elif src.is_dir():
        from jdnet_plugin.io import list_images

        source_id["fingerprint"] = files_fingerprint(list_images(src), src)
    key = {"task": "footage", **source_id, "max_frames": run.max_frames, "add_rain": run.add_rain,
           **({"add_rain_id": rain_id(run.add_rain)} if str(run.add_rain).startswith(TRANSPLANT) else {}),
           "seed": run.seed, "scale": str(run.rain_scale), "weights": wsha, "tile": run.tile}
    cacheable = src.exists()
    if run.add_rain:
        rain = rain_fn(run.add_rain, run.seed, run.rain_scale)
    derain = derain_fn(derainer, run.tile)

    def build(tmp: Path, final: Path) -> None:
        from jdnet_plugin.io import write_rgb

        frames, fps, count = _iter_frames(run.source, run.max_frames)
        names = []
        for name, rgb in tqdm(frames, total=count, desc="frames (rain, derain)", unit="frame", disable=None):
            stem = Path(name).stem
            if run.add_rain:
                write_rgb(tmp / "clean" / f"{stem}.png", rgb)
                rgb = rain(rgb, stem)
            write_rgb(tmp / "rainy" / f"{stem}.png", rgb)
            write_rgb(tmp / "derained" / f"{stem}.png", derain(rgb, stem))
            names.append(stem)
        (tmp / "frames.json").write_text(json.dumps({"frames": names, "fps": fps}))

    if not cacheable:  # a stream: nothing to key a cache on; build into OUT/frames every time
        target = cache / "stream-frames"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        build(target, target)
        return target, False
    return cached_copy(cache, "footage", key, build)


def _rain_scores(folder: Path, stems: list[str], derainer: torch.nn.Module, wsha: str, cache: Path
                 ) -> dict[str, float]:
    """:func:`jdnet_plugin.inference.rain_score` of each rainy frame (what the gate decides on), cached next to
    the frames: the gate then picks, per frame, the detections on the derained or on the rainy frame."""
    from jdnet_plugin.io import read_rgb

    path = cache / f"rain-scores-{digest({'frames': folder.name, 'weights': wsha, 'gate': GATE_VERSION}, 12)}.json"
    if path.is_file() and folder.name != "stream-frames":
        return json.loads(path.read_text())
    scores = {stem: float(image_rain_score(derainer, read_rgb(folder / "rainy" / f"{stem}.png")))
              for stem in tqdm(stems, desc="rain scores", unit="frame", disable=None)}
    if folder.name != "stream-frames":
        atomic_write_text(path, json.dumps(scores))
    return scores


def _labelled_detections(res, conf: float, label: str) -> np.ndarray:
    """The frame with its detections of at least ``conf`` drawn and ``label`` written on it (RGB)."""
    import cv2

    shown = res[res.boxes.conf >= conf].plot(line_width=1, font_size=8)  # BGR
    cv2.putText(shown, label, (8, shown.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2,
                cv2.LINE_AA)
    return np.ascontiguousarray(shown[..., ::-1])


def _detect_frames(yolo, folder: Path, stems: list[str], kinds: list[str], run: FootageRun,
                   scores: dict[str, float] | None) -> Iterator[tuple[dict[str, Any], dict[str, dict], np.ndarray]]:
    """Per frame: its CSV row (counts, mean confidences; with ``scores``, the rain score and the gate's
    choice), the detections of each kind (``derained_gated``: those of the frame the gate picks), and the
    rainy | derained side-by-side picture."""
    from jdnet_plugin.io import read_rgb

    for stem in tqdm(stems, desc="detect", unit="frame", disable=None):
        row: dict[str, Any] = {"frame": stem}
        dets, shown = {}, {}
        for k in kinds:
            res = _detect(yolo, read_rgb(folder / k / f"{stem}.png"), run)
            d = dets[k] = _dets(res)
            sel = d["conf"] >= run.conf
            row[f"{k}_count"] = int(sel.sum())
            row[f"{k}_mean_conf"] = float(d["conf"][sel].mean()) if sel.any() else None
            if k in ("rainy", "derained"):
                shown[k] = _labelled_detections(res, run.conf, k)
        if scores is not None:
            # compared in float32, as inference.gated compares rain_score's tensor with the threshold
            picked = "derained" if np.float32(scores[stem]) >= np.float32(run.gate) else "rainy"
            dets["derained_gated"] = dets[picked]
            row.update(derained_gated_count=row[f"{picked}_count"], derained_gated_mean_conf=row[f"{picked}_mean_conf"],
                       rain_score=scores[stem], gate_derained=picked == "derained")
        yield row, dets, np.concatenate([shown["rainy"], shown["derained"]], axis=1)


def _footage_summary(rows: list[dict], dets: dict[str, list], kinds: list[str], conf: float, names: dict[int, str],
                     with_reference: bool) -> tuple[dict, dict, list[str], dict | None]:
    """``(summary per kind, recovered fraction, notes, per-class mAP50-95)``: mean counts and confidences, and
    with a clean reference (``with_reference``) mAP against the clean frames' detections."""
    summary = {}
    for k in kinds:
        counts = [r[f"{k}_count"] for r in rows]
        confs = [r[f"{k}_mean_conf"] for r in rows if r[f"{k}_mean_conf"] is not None]
        summary[k] = {"mean_count": float(np.mean(counts)), "mean_conf": float(np.mean(confs)) if confs else None}
    if not with_reference:
        return (summary, {m: None for m in METRICS},
                ["no clean reference (pass --add-rain with clean footage): per-frame counts and confidences only"],
                None)
    maps = {k: detections_map(dets[k], dets["clean"], conf, names) for k in kinds}
    for k in kinds:
        summary[k].update(map50=maps[k]["map50"], map50_95=maps[k]["map50_95"])
    fraction, notes = recovered_fraction(summary["clean"], summary["rainy"], summary["derained"], METRICS)
    notes.append(f"reference: detections on the clean frames with conf >= {conf} "
                 f"({maps['clean']['reference_objects']} objects); clean's own mAP is the ceiling")
    return summary, fraction, notes, {k: {c: v["map50_95"] for c, v in maps[k]["per_class"].items()} for k in kinds}


def detect_footage(source: str, model: str, weights: str | os.PathLike, out: Path, *, cache: Path | None = None,
                   add_rain: str | None = None, max_frames: int | None = None, seed: int = 0, rain_scale: str = "1",
                   tile: int | None = None, imgsz: int = 640, device: str | None = None, conf: float = 0.25,
                   gate: str | float | None = None) -> dict[str, Any]:
    """Detections on the rainy and derained (and, with ``add_rain``, clean) frames of a video, image folder or
    stream: a side-by-side video, per-frame CSV/JSON and, with ``add_rain``, mAP against the clean frames'
    detections; ``gate`` ("auto" or a threshold) adds ``derained_gated``, each frame derained only when the
    rain gate says so. Writes report.json, report.md and plot.png to ``out`` and returns the report."""
    run = FootageRun(str(source), add_rain, max_frames, seed, rain_scale, tile, imgsz, device, conf,
                     resolve_gate_arg(gate))
    if run.add_rain:
        rain_fn(run.add_rain, run.seed, run.rain_scale)  # a bad preset or scale fails before any work
    out = Path(out).absolute()
    cache = Path(cache or out / "cache").absolute()
    _check_model_file(model)
    derainer, wsha = load_derainer(weights, pick_device(device))
    yolo = _load_detector(model)
    folder, reused = _frame_cache(cache, run, wsha, derainer)
    index = json.loads((folder / "frames.json").read_text())
    stems, fps = index["frames"], index["fps"]
    if not stems:
        raise EvalError(f"{source}: no frames could be read")
    scores = None if run.gate is None else _rain_scores(folder, stems, derainer, wsha, cache)
    kinds = (["clean"] if add_rain else []) + ["rainy", "derained"]
    rows, dets = _detect_footage_video(yolo, folder, stems, kinds, run, scores, fps, out / "side_by_side.mp4")
    out.mkdir(parents=True, exist_ok=True)
    _write_frames(out, rows)
    summary, fraction, notes, per_class = _footage_summary(
        rows, dets, kinds + (["derained_gated"] if scores is not None else []), conf, _model_names(yolo) or {},
        bool(add_rain))
    report = {
        **{k: summary.get(k, {}) for k in ("clean", "rainy", "derained")},
        **({"derained_gated": summary["derained_gated"],
            "gate": {"derained_gated": {"threshold": run.gate, "derained": sum(r["gate_derained"] for r in rows),
                                        "passed": sum(not r["gate_derained"] for r in rows)}}} if scores else {}),
        "recovered_fraction": fraction,
        **({"recovered_fraction_gated": recovered_fraction(summary["clean"], summary["rainy"],
                                                           summary["derained_gated"], METRICS)[0]}
           if scores and add_rain else {}),
        "notes": notes,
        "per_class": per_class or {},
        "config": {"mode": "footage", "source": str(source), "model": str(model), "weights": str(weights),
                   "weights_sha256": wsha, "add_rain": add_rain, "rain_scale": rain_scale, "seed": seed,
                   "imgsz": imgsz, "conf": conf, "gate": run.gate, "frames": len(stems), "fps": fps,
                   "metrics": "ultralytics.utils.metrics.ap_per_class, DetectionValidator.match_predictions"},
        "frames_cache": str(folder),
        "frames_reused": reused,
        "video": str(out / "side_by_side.mp4"),
        "frames_csv": str(out / "frames.csv"),
    }
    metrics = (*METRICS, "mean_count", "mean_conf") if add_rain else ("mean_count", "mean_conf")
    finish_report(out, report, "Footage detection", metrics, "map50_95" if per_class else None, per_class)
    return report


def _detect_footage_video(yolo, folder: Path, stems: list[str], kinds: list[str], run: FootageRun,
                          scores: dict[str, float] | None, fps: float, video_path: Path
                          ) -> tuple[list[dict], dict[str, list]]:
    """The per-frame rows and detections of each kind, writing the side-by-side video as it goes."""
    import cv2

    from jdnet_plugin.video import VideoWriter

    dets: dict[str, list] = {}
    rows = []
    with contextlib.ExitStack() as stack:
        writer = None
        for row, frame_dets, frame in _detect_frames(yolo, folder, stems, kinds, run, scores):
            rows.append(row)
            for k, d in frame_dets.items():
                dets.setdefault(k, []).append(d)
            if writer is None:
                writer = stack.enter_context(VideoWriter(video_path, fps, (frame.shape[1], frame.shape[0])))
            elif (frame.shape[1], frame.shape[0]) != writer.size:  # a folder of mixed sizes: the first one's size
                frame = cv2.resize(frame, writer.size, interpolation=cv2.INTER_AREA)
            writer.write(frame)
    return rows, dets


def evaluate_footage(args: argparse.Namespace) -> int:
    """The CLI's footage mode: :func:`detect_footage` with the parsed arguments."""
    detect_footage(args.source, args.model, args.weights, args.out, cache=args.cache, add_rain=args.add_rain,
                   max_frames=args.max_frames, seed=args.seed, rain_scale=args.rain_scale, tile=args.tile,
                   imgsz=args.imgsz, device=args.device, conf=args.conf, gate=args.gate)
    return 0


def _write_frames(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "frames.csv", buf.getvalue())
    atomic_write_text(out / "frames.json", json.dumps(to_jsonable(rows), indent=1))


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_tasks/detect.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset mode: a YOLO dataset YAML (its 'val' split is evaluated)")
    src.add_argument("--source", help="footage mode: a video file, image folder, or stream URL / camera index")
    p.add_argument("--model", required=True, help="detector: anything Ultralytics' YOLO() loads (local file)")
    add_common_args(p, rain_required=False)
    add_bootstrap_arg(p)
    p.add_argument("--add-rain", metavar="PRESET",
                   help="footage mode: the footage is clean; add rain and use the clean detections as reference")
    p.add_argument("--max-frames", type=int, default=None, help="footage mode: first N frames only")
    p.add_argument("--max-images", type=int, default=None, help="dataset mode: first N images only")
    p.add_argument("--conf", type=float, default=0.25,
                   help="footage mode: confidence threshold for counts, drawn boxes and reference objects")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="dataset mode: dataloader workers of YOLO.val")
    p.add_argument("--derain-at", choices=DERAIN_AT, default="frame",
                   help="dataset mode: derain each image at its own resolution (derained copies), or the "
                        "detector's letterboxed input (attach_derain(at='input'))")
    p.add_argument("--derain-clean", action="store_true",
                   help="dataset mode: also evaluate the derained clean images (what deraining costs without rain)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.data is not None:
        if not args.rain:
            raise EvalError("dataset mode needs --rain light|heavy|transplant:DIR")
        if args.add_rain or args.max_frames:
            raise EvalError("--add-rain and --max-frames are footage-mode options (--source); use --rain with --data")
        return evaluate_dataset(args)
    if args.derain_at != "frame":
        raise EvalError("--derain-at input is a dataset-mode option (--data); for footage see "
                        "benchmarks/derain_resolution.py")
    if args.rain or args.max_images:
        raise EvalError("--rain and --max-images are dataset-mode options (--data); footage mode adds rain with "
                        "--add-rain and limits frames with --max-frames")
    return evaluate_footage(args)


main = cli_entry(_run, build_parser)


if __name__ == "__main__":
    sys.exit(main())
