"""Semantic segmentation with and without deraining: mIoU on clean, rainy and derained copies.

    python eval_tasks/segment.py --images camvid_val/images --masks camvid_val/masks \
        --model espnet-cityscapes.torchscript --num-classes 11 --class-map cityscapes_to_camvid.json \
        --ignore-index 11 --rain light --weights jdnet.pt --out runs/segment-light

The model is a TorchScript file ((B,3,H,W) RGB in [0, 1] -> logits), an smp checkpoint (a folder written by
``save_pretrained``, or a whole pickled model) or an importable factory ``module:callable``. smp models get their
encoder's normalisation and padding. A class map JSON (``"lut"``: model channel -> dataset class) is applied to
the argmax. mIoU comes from one confusion matrix over the whole dataset (torchmetrics), ignore index excluded,
mean over the classes present in the ground truth; predictions outside the dataset's classes count as misses.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from jdnet_plugin.eval_tasks.common import (
    EvalError, add_common_args, cached_copy, check_limit, cli_entry, derain_fn, digest, files_fingerprint,
    finish_report, gate_report, gated_copies, load_derainer, map_image_tree, pick_device, rain_fn, rain_id,
    rain_label, recovered_fraction, resolve_gate_arg, sha256_file)
from jdnet_plugin.eval_tasks.bootstrap import (
    REPLICATES, add_bootstrap_arg, bootstrap_section, check_draws, miou_replicates, resample_counts)
from jdnet_plugin.integrations.segmentation import SegmenterAdapter
from jdnet_plugin.io import ImageReadError, read_image
from jdnet_plugin.utils.atomic import atomic_write_text

__all__ = ["load_segmenter", "Segmenter", "read_class_map", "pair_masks", "confusion_matrix", "iou_from_confusion",
           "segment_dataset", "evaluate_segmentation", "build_parser", "main"]

METRICS = ("miou",)


def _import_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise EvalError(f"segmentation model {spec}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EvalError(f"segmentation model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    model = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(model, nn.Module):
        raise EvalError(f"segmentation model {spec}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def load_segmenter(spec: str, device: torch.device | str = "cpu") -> nn.Module:
    """A segmentation model in eval mode from a TorchScript file, an smp checkpoint (``save_pretrained``
    folder, or a pickled model) or an importable factory ``module:callable``."""
    path = Path(spec)
    if not path.exists() and re.fullmatch(r"[\w.]+:[\w.]+", spec):
        return _import_factory(spec).to(device).eval()
    if not path.exists():
        raise FileNotFoundError(f"segmentation model {spec} not found")
    if path.is_dir():
        try:
            import segmentation_models_pytorch as smp
        except ImportError as e:
            raise EvalError(f"{spec} is a folder (an smp checkpoint?) but segmentation-models-pytorch is not "
                            "installed: pip install 'jdnet-plugin[smp]'") from e
        try:
            model = smp.from_pretrained(str(path))
        except Exception as e:  # smp raises various errors for folders that are not its checkpoints
            raise EvalError(f"{spec}: not an smp checkpoint folder ({type(e).__name__}: {e})") from e
        return model.to(device).eval()
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError:
        pass
    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise EvalError(f"{spec}: neither TorchScript nor a torch.save file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        raise EvalError(f"{spec} holds a {type(obj).__name__}, not a model; save the whole model "
                        "(torch.save(model) or model.save_pretrained(dir)), or pass a factory module:callable")
    return obj.to(device).eval()


class Segmenter(SegmenterAdapter):
    """RGB ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, C, H, W)``: :class:`jdnet_plugin.integrations.SegmenterAdapter` (smp
    normalisation and padding where the model is an smp model) under inference mode, dict/tuple outputs reduced
    to their main tensor, other sizes resized back to H, W."""

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = super().forward(x)
        if isinstance(out, dict):
            out = out.get("out", next(iter(out.values())))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise EvalError(f"the segmentation model returned {type(out).__name__} "
                            f"{tuple(getattr(out, 'shape', ()))}, expected logits (B, C, H, W)")
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)
        return out


def read_class_map(path: str | Path) -> tuple[torch.Tensor, list[str] | None]:
    """``(lut, target class names or None)`` of a class map JSON with a ``"lut"`` list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalError(f"class map {path}: not valid JSON ({e})") from e
    lut = data.get("lut") if isinstance(data, dict) else data
    if not isinstance(lut, list) or not lut or not all(isinstance(v, int) for v in lut):
        raise EvalError(f"class map {path}: expected {{\"lut\": [dataset class of model channel 0, 1, ...]}}")
    names = data.get("target_classes") if isinstance(data, dict) else None
    return torch.tensor(lut, dtype=torch.long), names if isinstance(names, list) else None


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file: one per line, or ``index name ...`` lines (CamVid's classes.txt)."""
    names = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        if tok[0].isdigit() and len(tok) > 1:
            names[int(tok[0])] = tok[1]
        else:
            names[len(names)] = line.strip()
    return [names[i] for i in sorted(names)]


def pair_masks(images_dir: Path, masks_dir: Path) -> tuple[list[Path], list[Path], list[str]]:
    """``(images, masks, images without a mask)``, matched by file stem."""
    from jdnet_plugin.io import IMAGE_EXTENSIONS, list_images

    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise NotADirectoryError(f"{what} folder {d} does not exist")
    images = list_images(images_dir, recursive=True)
    if not images:
        raise EvalError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    masks = {}
    for m in list_images(masks_dir, recursive=True):
        masks.setdefault(m.relative_to(masks_dir).with_suffix("").as_posix(), m)
    pairs, missing = [], []
    for f in images:
        m = masks.get(f.relative_to(images_dir).with_suffix("").as_posix())
        (pairs.append((f, m)) if m is not None else missing.append(f.name))
    if not pairs:
        raise EvalError(f"dataset with no labels: none of the {len(images)} images in {images_dir} has a mask of "
                        f"the same name in {masks_dir}")
    return [p[0] for p in pairs], [p[1] for p in pairs], missing


def read_mask(path: Path) -> np.ndarray:
    try:
        m = read_image(path)
    except ImageReadError as e:
        raise EvalError(f"cannot read the mask: {e}") from e
    if m.ndim == 3:
        if not (m[..., :1] == m).all():
            raise EvalError(f"{path}: a colour mask; expected one class index per pixel (a single-channel PNG)")
        m = m[..., 0]
    return m.astype(np.int64)


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
                     ) -> torch.Tensor:
    """``(N, N + 1)`` counts, rows ground truth, columns prediction; the last column counts predictions outside
    0..N-1 (e.g. mapped to void); pixels whose ground truth is ``ignore_index`` are left out."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    preds, target = preds.reshape(-1), target.reshape(-1)
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    preds = torch.where((preds >= 0) & (preds < num_classes), preds, num_classes)[keep]
    cm = multiclass_confusion_matrix(preds, target[keep], num_classes + 1, validate_args=False)
    return cm[:num_classes]


def iou_from_confusion(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(IoU per class, present)``: IoU = TP / (TP + FP + FN) from an ``(N, N + 1)`` confusion matrix; a class is
    present when it has ground-truth pixels. Leading dimensions are batch dimensions."""
    n = cm.shape[-2]
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)[..., :n]
    gt = cm.sum(-1)
    pred = cm[..., :n].sum(-2)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))
    return iou, gt > 0


def _check_classes(num_channels: int, num_classes: int, lut: torch.Tensor | None, ignore_index: int | None,
                   model: str, class_map: str | None) -> None:
    if lut is None:
        if num_channels != num_classes:
            raise EvalError(f"class-count mismatch: {model} outputs {num_channels} channels but --num-classes is "
                            f"{num_classes}; pass --class-map to map model classes to dataset classes")
        return
    if len(lut) != num_channels:
        raise EvalError(f"class-count mismatch: {model} outputs {num_channels} channels but the class map "
                        f"{class_map} maps {len(lut)}")
    bad = [int(v) for v in lut if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise EvalError(f"class map {class_map} maps to {sorted(set(bad))}, outside 0..{num_classes - 1} "
                        f"(--num-classes {num_classes}) and not the ignore index {ignore_index}")


def _evaluate_copy(seg: Segmenter, images: list[Path], masks: list[Path], num_classes: int,
                   ignore_index: int | None, lut: torch.Tensor | None, device: torch.device, desc: str,
                   check) -> torch.Tensor:
    """``(images, N, N + 1)``: the confusion matrix of each image."""
    from jdnet_plugin.io import read_rgb, to_tensor

    cms = []
    for img_path, mask_path in tqdm(list(zip(images, masks)), desc=desc, unit="img", disable=None):
        rgb = read_rgb(img_path)
        target = torch.from_numpy(read_mask(mask_path))
        if tuple(target.shape) != rgb.shape[:2]:
            raise EvalError(f"{mask_path}: mask size {tuple(target.shape)[::-1]} differs from its image "
                            f"{img_path} ({rgb.shape[1]}x{rgb.shape[0]})")
        bad = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bad.any():
            raise EvalError(f"{mask_path}: class {int(target[bad][0])} is outside 0..{num_classes - 1} "
                            f"(--num-classes {num_classes}) and not the ignore index {ignore_index}")
        logits = seg(to_tensor(rgb)[None].to(device))
        check(logits.shape[1])
        pred = logits.argmax(1)[0].cpu()
        if lut is not None:
            pred = lut[pred]
        cms.append(confusion_matrix(pred, target, num_classes, ignore_index))
    return torch.stack(cms) if cms else torch.zeros(0, num_classes, num_classes + 1, dtype=torch.long)


def _class_setup(class_map: str | None, class_names: str | None, num_classes: int, ignore_index: int | None
                 ) -> tuple[torch.Tensor | None, list[str]]:
    """``(lut or None, a name for each dataset class)``; a class map that contradicts ``num_classes`` fails."""
    if num_classes < 1:
        raise EvalError(f"--num-classes must be >= 1, got {num_classes}")
    lut, map_names = read_class_map(class_map) if class_map else (None, None)
    if lut is not None:  # the map alone can already contradict --num-classes
        bad = [int(v) for v in lut if not (0 <= v < num_classes or v == ignore_index)]
        if bad:
            raise EvalError(f"class-count mismatch: class map {class_map} maps to {sorted(set(bad))}, outside "
                            f"0..{num_classes - 1} (--num-classes {num_classes}) and not the ignore index "
                            f"{ignore_index}")
    names = (read_class_names(class_names) if class_names else map_names) or []
    return lut, [names[i] if i < len(names) else str(i) for i in range(num_classes)]


def _segment_copies(images: list[Path], root: Path, source: dict, cache: Path, rain: str, seed: int,
                    rain_scale: str, derainer: nn.Module, wsha: str, tile: int | None, derain_clean: bool,
                    gate: float | None = None) -> dict[str, tuple[Path, bool]]:
    """``{copy: (folder, reused)}``: clean (the source folder), rainy, derained (and clean_derained; with a
    ``gate`` threshold also derained_gated, clean_derained_gated)."""
    label = rain_label(rain)
    rain_key = {"task": "segment", **source, **rain_id(rain), "seed": seed, "scale": str(rain_scale)}
    rainy, rainy_reused = cached_copy(
        cache, f"{root.name}-rainy-{label}-s{seed}", rain_key,
        lambda tmp, final: map_image_tree(images, root, tmp, rain_fn(rain, seed, rain_scale), f"rain ({label})"))
    derain_key = {**rain_key, "weights": wsha, "tile": tile}
    clean_key = {"task": "segment", **source, "weights": wsha, "tile": tile}
    derained = cached_copy(
        cache, f"{root.name}-derained-{label}-s{seed}", derain_key,
        lambda tmp, final: map_image_tree([rainy / f.relative_to(root) for f in images], rainy, tmp,
                                          derain_fn(derainer, tile), "derain"))
    copies = {"clean": (root, True), "rainy": (rainy, rainy_reused), "derained": derained}
    if derain_clean:
        copies["clean_derained"] = cached_copy(
            cache, f"{root.name}-clean-derained", clean_key,
            lambda tmp, final: map_image_tree(images, root, tmp, derain_fn(derainer, tile), "derain clean"))
    sources = {"derained_gated": (f"{root.name}-derained-{label}-s{seed}", derain_key, rainy, derained[0])}
    if derain_clean:
        sources["clean_derained_gated"] = (f"{root.name}-clean-derained", clean_key, root, copies["clean_derained"][0])
    copies.update(gated_copies(cache, gate, derainer, tile, sources, lambda src, tmp, final, fn, desc: map_image_tree(
        [src / f.relative_to(root) for f in images], src, tmp, fn, desc)))
    return copies


def _score(cm: torch.Tensor, names: list[str]) -> dict[str, Any]:
    iou, present = iou_from_confusion(cm)
    return {"miou": float(iou[present].mean()) if present.any() else None,
            "pixel_accuracy": float(cm.diagonal().sum() / cm.sum()) if cm.sum() > 0 else None,
            "per_class": {names[c]: float(iou[c]) for c in range(len(names)) if present[c]},
            "confusion": cm.tolist()}


def _score_copies(seg: Segmenter, copies: dict[str, tuple[Path, bool]], images: list[Path], masks: list[Path],
                  root: Path, source: dict, cache: Path, key_base: dict, names: list[str], ignore_index: int | None,
                  lut: torch.Tensor | None, device: torch.device, check
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """``({copy: scores}, {copy: per-image confusion matrices})``; each copy's matrices cached by (copy, model,
    map, classes, masks, device)."""
    results: dict[str, dict] = {}
    per_image: dict[str, np.ndarray] = {}
    for copy, (folder, _) in copies.items():
        key = {"copy": source if copy == "clean" else folder.name, **key_base}
        mfile = cache / f"metrics-seg-{copy}-{digest(key, 12)}.json"
        cached = json.loads(mfile.read_text()) if mfile.is_file() else {}
        if "per_image" in cached:  # files of older versions hold only the sum: measured again
            cms = torch.tensor(cached["per_image"], dtype=torch.long).view(len(images), len(names), len(names) + 1)
        else:
            files = [folder / f.relative_to(root) for f in images]
            cms = _evaluate_copy(seg, files, masks, len(names), ignore_index, lut, device, copy, check)
            atomic_write_text(mfile, json.dumps({"confusion": cms.sum(0).tolist(), "per_image": cms.tolist()}))
        results[copy] = _score(cms.sum(0), names)
        per_image[copy] = cms.numpy()
    return results, per_image


def segment_dataset(images_dir: str | Path, masks_dir: str | Path, model: str, num_classes: int,
                    weights: str | Path, rain: str, out: Path, *, class_map: str | None = None,
                    class_names: str | None = None, ignore_index: int | None = None, cache: Path | None = None,
                    seed: int = 0, rain_scale: str = "1", device: str | None = None, tile: int | None = None,
                    derain_clean: bool = False, limit: int | None = None, gate: str | float | None = None,
                    bootstrap: int = REPLICATES) -> dict[str, Any]:
    """mIoU of the clean, rainy and derained copies of the (first ``limit``) images with masks, with the recovered
    fraction; writes report.json, report.md and plot.png to ``out`` and returns the report. ``rain`` is a preset
    or ``transplant:DIR`` (see :func:`jdnet_plugin.eval_tasks.common.rain_fn`); ``gate`` ("auto" or a threshold) adds copies
    derained with the rain gate; ``bootstrap``: draws of the images for the intervals (0: none)."""
    out, torch_device = Path(out).absolute(), pick_device(device)
    cache = Path(cache or out / "cache").absolute()
    images_dir, masks_dir = Path(images_dir).absolute(), Path(masks_dir).absolute()  # relative paths too
    images, masks, missing = pair_masks(images_dir, masks_dir)
    check_limit(limit)
    images, masks = (images[:limit], masks[:limit]) if limit else (images, masks)
    rain_fn(rain, seed, rain_scale)  # a bad preset, folder or scale fails before any work
    gate = resolve_gate_arg(gate)
    check_draws(bootstrap)
    lut, names = _class_setup(class_map, class_names, num_classes, ignore_index)
    seg = Segmenter(load_segmenter(str(model), torch_device)).to(torch_device)
    derainer, wsha = load_derainer(weights, torch_device)
    root = images_dir
    source = {"images": str(root.resolve()), "fingerprint": files_fingerprint(images, root)}
    copies = _segment_copies(images, root, source, cache, rain, seed, rain_scale, derainer, wsha, tile, derain_clean,
                             gate)
    key_base = {"model": sha256_file(model) if Path(model).is_file() else str(model),
                "map": sha256_file(class_map) if class_map else None, "n": num_classes, "ignore": ignore_index,
                "masks": files_fingerprint(masks, Path(masks_dir).absolute()), "device": str(device)}
    results, per_image = _score_copies(seg, copies, images, masks, root, source, cache, key_base, names, ignore_index, lut,
                            torch_device, lambda ch: _check_classes(ch, num_classes, lut, ignore_index, str(model),
                                                                    class_map))
    fraction, notes = recovered_fraction(results["clean"], results["rainy"], results["derained"], METRICS)
    names_rel = [str(f.relative_to(root)) for f in images]
    order = np.argsort(names_rel, kind="stable")
    counts = resample_counts(len(images), bootstrap)
    boot = bootstrap_section(names_rel, {c: {"miou": miou_replicates(v[order], counts)} for c, v in per_image.items()},
                             ("miou",))
    if missing:
        notes.append(f"{len(missing)} images have no mask and were skipped, e.g. {missing[:3]}")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    report = {
        **{c: {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]} for c, r in results.items()},
        "recovered_fraction": fraction,
        **gate_report(results, copies, METRICS),
        "bootstrap": boot,
        "notes": notes,
        "per_class": {c: r["per_class"] for c, r in results.items()},
        "confusion": {c: r["confusion"] for c, r in results.items()},
        "config": {"images": str(root), "masks": str(Path(masks_dir).absolute()), "model": str(model),
                   "num_classes": num_classes, "class_map": class_map, "ignore_index": ignore_index,
                   "class_names": names, "weights": str(weights), "weights_sha256": wsha, "rain": rain,
                   "rain_scale": rain_scale, "seed": seed, "count": len(images), "limit": limit,
                   "metrics": "one confusion matrix over the dataset (torchmetrics); IoU per class; mean over "
                              "classes present in the ground truth"},
        "copies": {c: str(f) for c, (f, _) in copies.items()},
        "copies_reused": {c: r for c, (_, r) in copies.items() if c != "clean"},
    }
    finish_report(out, report, "Segmentation", ("miou", "pixel_accuracy"), "iou",
                  {c: r["per_class"] for c, r in results.items()})
    return report


def evaluate_segmentation(args: argparse.Namespace) -> int:
    """The CLI: :func:`segment_dataset` with the parsed arguments."""
    segment_dataset(args.images, args.masks, args.model, args.num_classes, args.weights, args.rain, args.out,
                    class_map=args.class_map, class_names=args.class_names, ignore_index=args.ignore_index,
                    cache=args.cache, seed=args.seed, rain_scale=args.rain_scale, device=args.device,
                    tile=args.tile, derain_clean=args.derain_clean, limit=args.max_images, gate=args.gate,
                    bootstrap=args.bootstrap)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_tasks/segment.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of RGB images")
    p.add_argument("--masks", required=True, help="folder of class-index masks, same names as the images")
    p.add_argument("--model", required=True, help="TorchScript file, smp checkpoint, or module:callable")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the dataset (mask values 0..N-1)")
    p.add_argument("--class-map", default=None, help='JSON with "lut": model channel -> dataset class')
    p.add_argument("--class-names", default=None, help="text file with the dataset's class names")
    p.add_argument("--ignore-index", type=int, default=None, help="mask value left out of the metric (void)")
    add_common_args(p, rain_required=True)
    add_bootstrap_arg(p)
    p.add_argument("--derain-clean", action="store_true",
                   help="also evaluate the derained clean images (what deraining costs without rain)")
    p.add_argument("--max-images", type=int, default=None, help="first N images (with masks) only")
    return p


main = cli_entry(evaluate_segmentation, build_parser)


if __name__ == "__main__":
    sys.exit(main())
