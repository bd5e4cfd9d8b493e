"""Shared by the evaluation tasks: errors, cached image copies (rainy, derained), reports and plots.

A *copy* is a folder of images derived from a source folder by one function (add rain, derain, nothing),
keyed by everything that decides its pixels; it is built in a temporary folder and renamed into place with
a ``.complete.json`` marker, so an interrupted build is never reused and a rerun reuses a finished one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from jdnet_plugin.checkpoint import load_model, weights_file
from jdnet_plugin.cli._common import run_cli
from jdnet_plugin.data.datasets import DatasetError
from jdnet_plugin.gate import GATE_VERSION, GateStats, gate_threshold
from jdnet_plugin.io import read_rgb, to_tensor, write_rgb
from jdnet_plugin.rain import preset_digest
from jdnet_plugin.registry import DEFAULT_WEIGHTS, sha256_file
from jdnet_plugin.utils.atomic import atomic_path, atomic_write_text

__all__ = ["EvalError", "COPIES", "cli_main", "add_common_args", "sha256_file", "digest", "files_fingerprint",
           "load_derainer", "rain_fn", "transplant_fn", "transplant_layer", "rain_layers",
           "rain_id", "rain_label", "TRANSPLANT", "derain_fn", "cached_copy", "GATE_FILE", "gated_copies",
           "read_gate_file", "resolve_gate_arg", "gate_report",
           "map_image_tree", "recovered_fraction", "write_report", "finish_report", "markdown_table", "plot_metrics",
           "to_jsonable"]

COPIES = ("clean", "rainy", "derained")
MARKER = ".complete.json"
TRANSPLANT = "transplant:"  # rain spec prefix: benchmark rain of a paired folder put on the images
JPEG_QUALITY = 95  # derived copies keep the source's file names and formats; JPEG quality as jdnet_plugin.synth

ImageFn = Callable[[np.ndarray, str], np.ndarray | Path | None]  # None: the image unchanged; a path: that file


class EvalError(ValueError):
    """Bad input to an evaluation task (missing model, dataset without labels, class-count mismatch, ...)."""


def cli_main(run: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and call ``run(args)`` as every command line of the package does
    (:func:`jdnet_plugin.cli._common.run_cli`), with :class:`EvalError` as a user error too."""
    return run_cli(parser, run, argv, errors=(EvalError,))


def cli_entry(run: Callable[[argparse.Namespace], int], build_parser: Callable[[], argparse.ArgumentParser]
              ) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv) -> int`` of an evaluation script: :func:`cli_main` with a fresh parser each call."""

    def main(argv: Sequence[str] | None = None) -> int:
        return cli_main(run, build_parser(), argv)

    return main


def check_limit(limit: int | None) -> None:
    """An image limit (``--max-images``) is None/0 (all images) or positive."""
    if limit is not None and limit < 0:
        raise EvalError(f"image limit must be positive, got {limit}")


def add_common_args(p: argparse.ArgumentParser, rain_required: bool = True) -> None:
    p.add_argument("--weights", default=DEFAULT_WEIGHTS,
                   help="deraining checkpoint or registered weights name (default: %(default)s)")
    p.add_argument("--rain", required=rain_required,
                   help="rain of the rainy copy: light, heavy, mixed or another name in rain_presets.yaml, or "
                        "transplant:DIR (the rain layers of the paired benchmark folder DIR)")
    p.add_argument("--rain-scale", default="1",
                   help="streak size factor, or 'auto' = shorter image side / 320, as jdnet_plugin.synth --scale")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.json, report.md, plot)")
    p.add_argument("--cache", type=Path, default=None, help="where the image copies are kept (default: OUT/cache)")
    p.add_argument("--seed", type=int, default=0, help="rain seed (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--tile", type=int, default=None, help="derain in tiles of this size (big images)")
    p.add_argument("--gate", default=None, metavar="auto|T",
                   help="also evaluate with the rain gate (jdnet_plugin.gate): derained copies in which images "
                        "scoring below T ('auto': the calibrated threshold) are left as they are")


def pick_device(device: str | None) -> torch.device:
    if device in (None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{device}" if str(device).isdigit() else device)


def digest(obj: Any, n: int = 16) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def files_fingerprint(files: Iterable[Path], root: Path) -> str:
    """Identity of a set of source files: relative names, sizes and modification times."""
    items = []
    for f in files:
        st = f.stat()
        items.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return digest(sorted(items), 32)


def load_derainer(weights: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, str]:
    """``(model, sha256 of the checkpoint)``."""
    path = weights_file(weights)
    return load_model(path, device=device), sha256_file(path)


def rain_fn(preset: str, seed: int, scale: str | float = "1") -> ImageFn:
    """``fn(rgb, relative name)`` adding the rain ``python -m jdnet_plugin.synth SRC --preset P --seed N --scale S``
    adds to that file of SRC: the same per-file seed, preset choice and streak scale.

    ``preset`` ``transplant:DIR`` puts the rain of the paired benchmark folder DIR on the image instead
    (:func:`transplant_fn`)."""
    from jdnet_plugin.rain import file_rain

    if str(preset).startswith(TRANSPLANT):
        if str(scale) not in ("1", "1.0"):
            raise EvalError(f"--rain-scale {scale} does not apply to transplanted rain ({preset}): the benchmark's "
                            "rain layer is scaled only as much as it takes to cover the image")
        return transplant_fn(str(preset)[len(TRANSPLANT):], seed)
    try:
        return file_rain(preset, seed, scale)
    except KeyError as e:
        raise EvalError(e.args[0] if e.args else f"unknown rain preset {preset!r}") from None
    except ValueError as e:
        raise EvalError(str(e)) from None


def _benchmark_pairs(folder: str | os.PathLike):
    """The paired dataset of a benchmark folder (rainy + clean); EvalError naming the folder if it is not one."""
    from jdnet_plugin.data import make_dataset

    path = Path(folder)
    if not str(folder) or not path.exists():
        raise EvalError(f"transplanted rain: benchmark folder {str(folder)!r} does not exist")
    try:
        ds = make_dataset(path, require_pairs=True)
    except DatasetError as e:
        raise EvalError(f"transplanted rain: {path} is not a paired rainy/clean benchmark folder ({e})") from None
    if len(ds) == 0 or "clean" not in ds[0]:
        raise EvalError(f"transplanted rain: {path} has no rainy/clean pairs")
    return ds


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] (a dataset item, exactly k/255) back to its 8-bit ``(H, W, 3)`` pixels."""
    return (t.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def rain_layers(folder: str | os.PathLike) -> list[np.ndarray]:
    """The rain layer ``clip(rainy - clean, 0, 255)`` (uint8) of every pair of a benchmark folder."""
    ds = _benchmark_pairs(folder)
    if hasattr(ds, "pairs"):  # rainy/clean files (PairedImageDataset): read them as they are
        pairs = (tuple(read_rgb(f) for f in pair) for pair in ds.pairs)
    else:  # other paired layouts (side by side): the dataset's items, back to their 8-bit pixels
        pairs = ((_to_uint8(item["rain"]), _to_uint8(item["clean"])) for item in (ds[i] for i in range(len(ds))))
    layers = []
    for rain, clean in pairs:
        if rain.shape != clean.shape:
            raise EvalError(f"transplanted rain: a pair in {folder} has rainy {rain.shape} and clean {clean.shape}")
        layers.append(np.clip(rain.astype(np.int16) - clean.astype(np.int16), 0, 255).astype(np.uint8))
    return layers


def transplant_layer(rgb: np.ndarray, layer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clip(rgb + window of layer)``: the layer scaled (one factor for both axes, INTER_LINEAR) just enough
    to cover the image when it is smaller, and a random window of the image's size cut from it."""
    import cv2

    h, w = rgb.shape[:2]
    lh, lw = layer.shape[:2]
    factor = max(h / lh, w / lw)
    if factor > 1.0:
        size = (max(w, math.ceil(lw * factor - 1e-6)), max(h, math.ceil(lh * factor - 1e-6)))
        layer = cv2.resize(layer, size, interpolation=cv2.INTER_LINEAR)
        lh, lw = layer.shape[:2]
    y = int(rng.integers(0, lh - h + 1))
    x = int(rng.integers(0, lw - w + 1))
    window = layer[y:y + h, x:x + w]
    if rgb.ndim == 2:
        window = window.mean(axis=2).round().astype(np.uint8) if window.ndim == 3 else window
    return np.clip(rgb.astype(np.int16) + window.astype(np.int16), 0, 255).astype(np.uint8)


def transplant_fn(folder: str | os.PathLike, seed: int) -> ImageFn:
    """``fn(rgb, relative name)``: the rain of one pair of the benchmark ``folder`` on the image, pair and window
    chosen by the per-file seed (as :func:`rain_fn`). The folder is checked now; its layers load on first use."""
    from jdnet_plugin.rain import file_seed

    _benchmark_pairs(folder)  # a bad folder fails before any work
    cache: list[list[np.ndarray]] = []

    def fn(rgb: np.ndarray, key: str) -> np.ndarray:
        if not cache:
            cache.append(rain_layers(folder))
        layers = cache[0]
        rng = np.random.default_rng(file_seed(seed, key))
        return transplant_layer(rgb, layers[int(rng.integers(len(layers)))], rng)

    return fn


def rain_id(spec: str) -> dict[str, Any]:
    """What identifies a rain spec's pixels in a cache key: the spec with, for a preset, its parameters (an
    edited preset is another rain), and for transplanted rain the benchmark folder's absolute path and
    fingerprint (its files' names, sizes and times)."""
    if not str(spec).startswith(TRANSPLANT):
        return {"rain": spec, "params": preset_digest(spec)}
    folder = Path(str(spec)[len(TRANSPLANT):])
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else []
    return {"rain": spec, "rain_dir": str(folder.resolve()), "rain_fingerprint": files_fingerprint(files, folder)}


def rain_label(spec: str) -> str:
    """A file-name-safe short name of a rain spec (``transplant:../x/rain100L_test`` -> ``transplant-rain100L_test``)."""
    if str(spec).startswith(TRANSPLANT):
        spec = "transplant-" + (Path(str(spec)[len(TRANSPLANT):]).resolve().name or "root")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(spec))


def image_rain_score(model: torch.nn.Module, rgb: np.ndarray) -> torch.Tensor:
    """:func:`jdnet_plugin.inference.rain_score` of an RGB uint8 image, scored as ``derain(gate=...)`` scores it
    (from the image's CPU tensor)."""
    from jdnet_plugin.inference import rain_score

    with torch.inference_mode():
        return rain_score(model, to_tensor(rgb))


def derain_fn(model: torch.nn.Module, tile: int | None = None, gate: float | None = None,
              gate_stats: GateStats | None = None, twin: Path | None = None) -> ImageFn:
    """``fn(rgb, name)``: the image through ``jdnet_plugin.inference.derain`` (on the model's device), with the
    rain gate at threshold ``gate`` when given (``gate_stats`` counts what it passed; a passed image is None:
    keep the file). ``twin``: a copy of the same images derained without the gate (same weights and tile),
    whose file is taken (a path) for each image the gate derains, instead of deraining it again."""
    from jdnet_plugin.inference import derain

    def fn(rgb: np.ndarray, key: str) -> np.ndarray | Path | None:
        if gate is not None:
            keep = image_rain_score(model, rgb) >= gate
            if gate_stats is not None:
                gate_stats.update(keep[None].cpu())
            if not keep:
                return None
            if twin is not None and (twin / key).is_file():
                return twin / key
        return derain(rgb, model=model, tile=tile)

    return fn


GATE_FILE = "gate.json"  # in a gated copy's folder: {"threshold", "derained", "passed"}


def gated_copies(cache: Path, gate: float | None, model: torch.nn.Module, tile: int | None,
                 sources: Mapping[str, tuple[str, dict, Path, Path | None]],
                 write: Callable[[Path, Path, Path, ImageFn, str], None]) -> dict[str, tuple[Path, bool]]:
    """Copies derained with the rain gate at threshold ``gate`` (none when it is None), cached as
    :func:`cached_copy`: ``sources`` is ``{copy: (folder name, cache key, source folder, ungated twin copy
    or None)}`` (the twin's files are taken for the images the gate derains);
    ``write(src, tmp, final, fn, desc)`` writes the copy of ``src`` through ``fn`` into ``tmp``. Each copy
    records what the gate derained in ``GATE_FILE``."""
    out = {}
    for copy, (name, key, src, twin) in (sources.items() if gate is not None else ()):
        def build(tmp: Path, final: Path, src: Path = src, copy: str = copy, twin: Path | None = twin) -> None:
            stats = GateStats()
            write(src, tmp, final, derain_fn(model, tile, gate, stats, twin), f"{copy} (gate)")
            atomic_write_text(tmp / GATE_FILE, json.dumps({"threshold": gate, "derained": stats.derained,
                                                           "passed": stats.passed}))

        out[copy] = cached_copy(cache, f"{name}-gate{gate:g}", {**key, "gate": gate, "gate_version": GATE_VERSION},
                                build)
    return out


def read_gate_file(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / GATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def gate_report(results: Mapping[str, Mapping[str, Any]], copies: Mapping[str, tuple[Path, bool]],
                metrics: Sequence[str]) -> dict[str, Any]:
    """With gated copies: ``{"recovered_fraction_gated": ..., "gate": {copy: {"threshold", "derained",
    "passed"}}}`` (how many images the gate sent to the derainer in each); ``{}`` without."""
    if "derained_gated" not in results:
        return {}
    fraction, _ = recovered_fraction(results["clean"], results["rainy"], results["derained_gated"], metrics)
    return {"recovered_fraction_gated": fraction,
            "gate": {c: results[c].get("gate") or read_gate_file(folder) for c, (folder, _) in copies.items()
                     if c.endswith("_gated")}}


def resolve_gate_arg(gate: str | float | None) -> float | None:
    """``--gate`` of the evaluations: None/"off" (no gated copies), "auto" or a threshold."""
    try:
        return gate_threshold(gate)
    except ValueError as e:
        raise EvalError(f"--gate: {e}") from e


def _write_image(path: Path, rgb: np.ndarray) -> None:
    params = [1, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else None  # cv2.IMWRITE_JPEG_QUALITY
    write_rgb(path, rgb, params)


def map_image_tree(files: Sequence[Path], src_root: Path, dst_root: Path, fn: ImageFn | None,
                   desc: str = "images") -> list[Path]:
    """Write ``fn(image, relative name)`` of each of ``files`` (under ``src_root``) to the same relative
    path under ``dst_root``; ``fn=None``, or ``fn`` returning None (the image unchanged), links the file
    (copies it where links are not possible), so that it is not encoded again; ``fn`` returning a path links
    that file instead."""
    out = []
    for f in tqdm(files, desc=desc, unit="img", leave=False, disable=None):
        rel = f.relative_to(src_root)
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        image = None if fn is None else fn(read_rgb(f), rel.as_posix())
        if image is None or isinstance(image, Path):
            linked = f if image is None else image
            try:
                os.symlink(linked.resolve(), dst)
            except OSError:
                shutil.copy2(linked, dst)
        else:
            _write_image(dst, image)
        out.append(dst)
    return out


def cached_copy(cache_root: Path, name: str, key: Mapping[str, Any], build: Callable[[Path, Path], None]
                ) -> tuple[Path, bool]:
    """``(folder, reused)``: the finished copy for ``key``, built by ``build(tmp_dir, final_dir)`` if missing.

    ``build`` writes into ``tmp_dir``; anything that must name the copy's final location (a dataset YAML)
    uses ``final_dir``. The folder is renamed into place only once complete.
    """
    final = Path(cache_root).absolute() / f"{name}-{digest(dict(key), 12)}"
    if (final / MARKER).is_file():
        return final, True
    if final.exists():  # an unfinished or foreign folder under our name
        shutil.rmtree(final)
    tmp = final.with_name(final.name + f".partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        build(tmp, final)
        atomic_write_text(tmp / MARKER, json.dumps({"key": to_jsonable(dict(key)), "created": time.time()},
                                                   indent=1))
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():
                raise
            shutil.rmtree(tmp)  # another process finished the same copy first: the same pixels, use it
            return final, True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False


def fraction_recovered(clean: Any, rainy: Any, derained: Any) -> Any:
    """``(derained - rainy) / (clean - rainy)`` elementwise (numbers or arrays); NaN where rain cost nothing."""
    cost = np.asarray(clean, np.float64) - rainy
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(cost) > 1e-9, (np.asarray(derained, np.float64) - rainy) / cost, np.nan)


def recovered_fraction(clean: Mapping[str, float | None], rainy: Mapping[str, float | None],
                       derained: Mapping[str, float | None], metrics: Sequence[str]
                       ) -> tuple[dict[str, float | None], list[str]]:
    """:func:`fraction_recovered` per metric; None (with a note) where rain cost nothing."""
    out, notes = {}, []
    for m in metrics:
        c, r, d = clean.get(m), rainy.get(m), derained.get(m)
        if c is None or r is None or d is None:
            out[m] = None
            notes.append(f"{m}: not all three copies have a value")
        elif np.isnan(f := fraction_recovered(c, r, d)):
            out[m] = None
            notes.append(f"{m}: clean and rainy are equal ({c:.4f}), rain cost nothing to recover")
        else:
            out[m] = float(f)
    return out, notes


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[_fmt(v) for v in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, report: Mapping[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(to_jsonable(report), indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown.rstrip() + "\n")


def plot_metrics(path: Path, overall: Mapping[str, Mapping[str, float | None]],
                 per_class: Mapping[str, Mapping[str, float | None]] | None, metric: str, title: str) -> Path:
    """Bars: each metric per copy (left), ``metric`` per class for each copy (right). ``overall`` is
    ``{copy: {metric: value}}``, ``per_class`` is ``{copy: {class: value}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copies = list(overall)
    metrics = sorted({m for v in overall.values() for m in v if isinstance(v.get(m), (int, float))})
    classes = sorted({c for v in (per_class or {}).values() for c in v}, key=str)
    width = 0.8 / max(1, len(copies))
    fig, axes = plt.subplots(1, 2 if classes else 1, figsize=(4 + (0.35 * len(classes) * len(copies) / 2
                                                               if classes else 0) + 4, 4.5),
                             squeeze=False, gridspec_kw={"width_ratios": [1, max(1, len(classes) / 4)]}
                             if classes else None)
    ax = axes[0, 0]
    for i, c in enumerate(copies):
        vals = [overall[c].get(m) or 0.0 for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=c)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(copies) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    if classes:
        ax = axes[0, 1]
        for i, c in enumerate(copies):
            vals = [(per_class.get(c) or {}).get(k) or 0.0 for k in classes]
            ax.bar(np.arange(len(classes)) + i * width, vals, width, label=c)
        ax.set_xticks(np.arange(len(classes)) + width * (len(copies) - 1) / 2, classes, rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric} per class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def finish_report(out: Path, report: dict, title: str, metrics: Sequence[str], class_metric: str | None,
            per_class: dict | None, extra_md: str = "") -> None:
    """Write report.json, report.md and plot.png to ``out`` and print the table: ``report`` has the copies'
    metric dicts, ``recovered_fraction``, ``notes`` and ``config``; ``per_class`` is ``{copy: {class: value}}``."""
    copies = [c for c in (*COPIES, "clean_derained", "derained_gated", "clean_derained_gated")
              if isinstance(report.get(c), dict) and report[c]]
    for suffix in ("", "_gated"):
        if f"clean_derained{suffix}" in copies:  # what deraining costs on images without rain
            report[f"clean_cost{suffix}"] = {
                m: report["clean"][m] - report[f"clean_derained{suffix}"][m] for m in metrics
                if isinstance(report["clean"].get(m), float)
                and isinstance(report[f"clean_derained{suffix}"].get(m), float)}
    table = markdown_table(["copy", *metrics], [[c, *(report[c].get(m) for m in metrics)] for c in copies])
    frac = report["recovered_fraction"]
    def fractions(values: Mapping[str, float | None]) -> str:
        return ", ".join(f"{m} {'-' if v is None else f'{v:.3f}'}" for m, v in values.items())

    frac_line = "recovered fraction (derained - rainy) / (clean - rainy): " + fractions(frac)
    if "recovered_fraction_gated" in report:
        frac_line += "; with the rain gate (derained_gated): " + fractions(report["recovered_fraction_gated"])
    md = [f"# {title}: clean vs rainy vs derained", "", table, "", frac_line, ""]
    for suffix in ("", "_gated"):
        if f"clean_cost{suffix}" in report:
            md.append(f"cost of deraining on clean images (clean - clean_derained{suffix}): " + ", ".join(
                f"{m} {v:+.4f}" for m, v in report[f"clean_cost{suffix}"].items()))
    boot = report.get("bootstrap")
    if boot:
        def ci(v: Sequence[float] | None) -> str:
            return "-" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"

        md.append(f"95 % intervals over images (bootstrap, {boot['replicates']} draws): recovered fraction " + ", ".join(
            f"{m} {ci(v['ci95'])}" for m, v in boot["recovered_fraction"].items()) + "; clean cost " + ", ".join(
            f"{m} {ci(v.get('clean_cost'))}" for m, v in boot["intervals"].items()))
    for copy, g in (report.get("gate") or {}).items():
        if g:
            md.append(f"rain gate (threshold {g['threshold']:g}) in {copy}: {g['derained']} images derained, "
                      f"{g['passed']} passed through")
    md += [f"- note: {n}" for n in report.get("notes", [])]
    if per_class:
        classes = sorted({k for v in per_class.values() for k in v})
        md += ["", f"## {class_metric} per class", "",
               markdown_table(["class", *per_class], [[k, *(per_class[c].get(k) for c in per_class)]
                                                      for k in classes])]
    if extra_md:
        md += ["", extra_md]
    md += ["", "## Configuration", "", "```json", json.dumps(to_jsonable(report.get("config", {})), indent=1), "```"]
    write_report(out, report, "\n".join(md))
    if copies:
        plot_metrics(out / "plot.png", {c: {m: report[c].get(m) for m in metrics} for c in copies},
                     per_class, class_metric or metrics[0], title)
    print(table)
    print(frac_line)
    for n in report.get("notes", []):
        print(f"note: {n}")
    print(f"report: {out / 'report.json'}")
