"""``python -m jdnet_plugin.synth SRC --out DST --preset light|heavy|mixed --seed N``: a rainy copy of an image
or of a dataset tree.

Every image gets rain, except under label/mask folders; those, and every other file, are copied
unchanged. Ultralytics dataset YAMLs are copied with ``path:`` pointing at the copy (added when
absent), so ``model.val(data=DST/data.yaml)`` evaluates on the rainy images with the original labels.

Which files never get rain: those with a folder (relative to SRC) or a file stem matching one of
the ``--keep`` globs, case-insensitive; by default ``*label*``, ``*mask*``, ``*annot*``, ``gt``,
``groundtruth``, ``ground_truth`` and ``segmentation*`` (YOLO ``labels/``, ``masks/``, CamVid
``*annot``, VOC ``SegmentationClass``). Hidden files and Ultralytics ``*.cache`` files (which name the
source paths) are not copied.

Each image's rain is seeded from ``--seed`` and its path relative to SRC, so results do not depend
on the order or on ``--workers``. Existing outputs are kept (a stopped run resumes) unless
``--overwrite``. Unreadable images are reported and skipped; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fnmatch
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from ..io import IMAGE_EXTENSIONS, ImageReadError, read_rgb, write_rgb
from ..rain.files import file_rain, file_seed, parse_scale
from ..utils.atomic import atomic_copy, atomic_write_text
from ._common import CLIError, run_cli

__all__ = ["main", "build_parser", "plan", "file_seed", "rewrite_dataset_yaml", "DEFAULT_KEEP"]

DEFAULT_KEEP = ("*label*", "*mask*", "*annot*", "gt", "groundtruth", "ground_truth", "segmentation*")
SKIPPED_SUFFIXES = (".cache",)
DATASET_SPLITS = ("train", "val", "test", "minival")


@dataclass(frozen=True)
class Job:
    kind: str  # "rain", "copy" or "yaml"
    src: Path
    dst: Path
    rel: str   # path relative to SRC, POSIX style: the seed and the name in messages


def _keep_unchanged(rel: Path, patterns: tuple[str, ...]) -> bool:
    names = [p.lower() for p in rel.parts[:-1]] + [rel.stem.lower()]
    return any(fnmatch.fnmatchcase(name, pat.lower()) for name in names for pat in patterns)


def _check_destination(src: Path, dst: Path) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise CLIError(f"--out {dst} is SRC itself; the source is never overwritten")
    if s in d.parents:
        raise CLIError(f"--out {dst} is inside SRC {src}; choose a folder outside it")
    if d in s.parents:
        raise CLIError(f"--out {dst} contains SRC {src}; its files could be overwritten, choose another folder")


def plan(src: Path, dst: Path, keep: tuple[str, ...] = DEFAULT_KEEP) -> list[Job]:
    """What to do with every file of SRC (a file or a folder tree), in a stable order."""
    if not src.exists():
        raise CLIError(f"{src}: no such file or folder")
    if src.is_file():
        if src.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CLIError(f"{src}: not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        out = dst if dst.suffix.lower() in IMAGE_EXTENSIONS else dst / src.name
        if out.resolve() == src.resolve():
            raise CLIError(f"--out {dst} would overwrite SRC {src}")
        return [Job("rain", src, out, src.name)]
    _check_destination(src, dst)
    jobs = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.lower().endswith(SKIPPED_SUFFIXES):
                continue
            path = Path(root) / name
            rel = path.relative_to(src)
            suffix = path.suffix.lower()
            if _keep_unchanged(rel, keep):
                kind = "copy"
            elif suffix in IMAGE_EXTENSIONS:
                kind = "rain"
            elif suffix in (".yaml", ".yml"):
                kind = "yaml"
            else:
                kind = "copy"
            jobs.append(Job(kind, path, dst / rel, rel.as_posix()))
    return jobs


def rewrite_dataset_yaml(text: str, yaml_src: Path, yaml_dst: Path, src_root: Path, dst_root: Path,
                         ) -> tuple[str | None, str | None]:
    """An Ultralytics dataset YAML rewritten for the copy: ``(new_text, warning)``.

    ``new_text`` is None for a YAML that is not a dataset description (copied as is). ``path:`` is
    set to the copy's dataset root (the YAML's folder when absent, as Ultralytics assumes); absolute
    split paths inside SRC are mapped into DST; everything else, comments included, is kept.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None, None
    if not (isinstance(data, dict) and any(k in data for k in DATASET_SPLITS)
            and ("names" in data or "nc" in data)):
        return None, None
    src_root, dst_root = src_root.resolve(), dst_root.resolve()

    def into_copy(p: Path) -> Path | None:
        p = p.resolve()
        return dst_root / p.relative_to(src_root) if p == src_root or src_root in p.parents else None

    old = data.get("path")
    if old is None or str(old).strip() == "":
        new_root = yaml_dst.resolve().parent
    else:
        old_path = Path(str(old)).expanduser()
        candidates = [old_path] if old_path.is_absolute() else [yaml_src.parent / old_path, src_root / old_path]
        new_root = next((m for m in map(into_copy, candidates) if m is not None), None)
        if new_root is None:
            return text, (f"{yaml_src}: path: {old} is outside SRC, so the copy still points at the original "
                          "images; copied unchanged")
    new = dict(data, path=str(new_root))
    for split in DATASET_SPLITS:
        value = data.get(split)
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and Path(v).is_absolute() for v in items):
            mapped = [str(into_copy(Path(v)) or v) if isinstance(v, str) and Path(v).is_absolute() else v
                      for v in items]
            new[split] = mapped if isinstance(value, list) else mapped[0]

    line = f"path: {json.dumps(str(new_root))}"
    pattern = re.compile(r"^path[ \t]*:.*$", re.MULTILINE)
    if pattern.search(text):
        out = pattern.sub(lambda _: line, text, count=1)
    else:
        # After the leading comment block, so a header stays on top.
        lines = text.splitlines(keepends=True)
        i = next((k for k, s in enumerate(lines) if s.strip() and not s.lstrip().startswith("#")), len(lines))
        out = "".join(lines[:i] + [line + "  # the rainy copy (jdnet_plugin.synth)\n"] + lines[i:])
    try:
        ok = yaml.safe_load(out) == new
    except yaml.YAMLError:
        ok = False
    if not ok:  # a layout the line edit cannot express (flow style, mapped splits): write it out afresh
        out = yaml.safe_dump(new, sort_keys=False, allow_unicode=True)
    return out, None


def _rain_file(job: Job, preset: str, seed: int, scale: str, jpeg_quality: int) -> str | None:
    """Read, rain, write one image; an error message naming the file, or None."""
    import cv2

    try:
        rgb = read_rgb(job.src)
        params_jpeg = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if job.dst.suffix.lower() in (".jpg", ".jpeg") else None
        write_rgb(job.dst, file_rain(preset, seed, scale)(rgb, job.rel), params_jpeg)
    except (ImageReadError, OSError, ValueError) as e:
        return f"{job.rel}: {e}"
    return None


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _copy(job: Job) -> None:
    atomic_copy(job.src, job.dst)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jdnet_plugin.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, metavar="SRC", help="an image, or a folder tree (a dataset)")
    ap.add_argument("--out", type=Path, required=True, metavar="DST",
                    help="output folder (or image file when SRC is an image); never inside SRC")
    ap.add_argument("--preset", default="light",
                    help="a rain preset of jdnet_plugin/configs/rain_presets.yaml: light, heavy, mixed, drizzle, "
                         "streaks, downpour, garg-nayar, veil, storm, broad (all of them mixed)")
    ap.add_argument("--seed", type=int, default=0, help="base seed; each file's seed also depends on its path")
    ap.add_argument("--scale", default="1",
                    help="streak size factor, or 'auto' = shorter image side / 320 (Rain100L's size); default 1")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (0 or 1: in-process)")
    ap.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: keep them)")
    ap.add_argument("--keep", action="append", default=[], metavar="GLOB",
                    help="also copy unchanged files under folders, or with stems, matching GLOB (repeatable)")
    ap.add_argument("--jpeg-quality", type=int, default=95, help="quality of .jpg outputs (default 95)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _validate(args: argparse.Namespace) -> None:
    from ..rain import check_rain_sources

    check_rain_sources(args.preset)  # an unknown preset or missing streak images: before any file is written
    try:
        parse_scale(args.scale)
    except ValueError:
        raise CLIError(f"--scale must be a positive number or 'auto', got {args.scale!r}") from None
    if not 0 <= args.jpeg_quality <= 100:
        raise CLIError(f"--jpeg-quality must lie in 0..100, got {args.jpeg_quality}")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    src, dst = args.src, args.out
    jobs = plan(src, dst, DEFAULT_KEEP + tuple(args.keep))
    if not any(j.kind == "rain" for j in jobs):
        raise CLIError(f"{src}: no images to rain on (all files are labels, masks or other files)")
    src_root = src if src.is_dir() else src.parent
    todo = [j for j in jobs if args.overwrite or not j.dst.exists()]
    existing = len(jobs) - len(todo)
    rain_jobs = [j for j in todo if j.kind == "rain"]
    counts = {"copy": 0, "yaml": 0}
    for job in todo:
        if job.kind == "copy":
            _copy(job)
            counts["copy"] += 1
        elif job.kind == "yaml":
            text = job.src.read_text(encoding="utf-8")
            new, warning = rewrite_dataset_yaml(text, job.src, job.dst, src_root, dst)
            if warning:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            if new is None or warning:
                _copy(job)
                counts["copy"] += 1
            else:
                atomic_write_text(job.dst, new)
                counts["yaml"] += 1

    failures: list[str] = []
    bar = tqdm(total=len(rain_jobs), unit="img", desc=f"rain ({args.preset})", disable=args.quiet or None)
    task = (args.preset, args.seed, args.scale, args.jpeg_quality)
    if args.workers <= 1 or len(rain_jobs) <= 1:
        for job in rain_jobs:
            err = _rain_file(job, *task)
            if err:
                failures.append(err)
                tqdm.write(f"failed: {err}", file=sys.stderr)
            bar.update()
    else:
        with cf.ProcessPoolExecutor(args.workers, initializer=_worker_init) as pool:
            futures = [pool.submit(_rain_file, job, *task) for job in rain_jobs]
            for fut in cf.as_completed(futures):
                err = fut.result()
                if err:
                    failures.append(err)
                    tqdm.write(f"failed: {err}", file=sys.stderr)
                bar.update()
    bar.close()
    done = len(rain_jobs) - len(failures)
    print(f"{dst}: {done} image(s) with {args.preset} rain, {counts['copy']} file(s) copied unchanged, "
          f"{counts['yaml']} dataset yaml(s) pointed at the copy, {existing} existing output(s) kept"
          + (f", {len(failures)} failed" if failures else ""))
    if failures:
        print(f"error: {len(failures)} image(s) could not be processed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _run_resumable(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are complete, rerun to resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run_resumable, argv, errors=(OSError,))


if __name__ == "__main__":
    raise SystemExit(main())
