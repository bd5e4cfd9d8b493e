"""``python -m jdnet_plugin.derain INPUT... --out DIR``: derain image files, folders, globs and videos.

Examples::

    python -m jdnet_plugin.derain photo.jpg rainy_folder/ "shots/*.png" clip.mp4 --out derained/ --weights w.pt
    python -m jdnet_plugin.derain big.tif --out out/ --tile 512 --device cuda --dtype bfloat16 --side-by-side
    python -m jdnet_plugin.derain footage/ --out derained/ --gate auto
    torchrun --standalone --nproc_per_node 4 -m jdnet_plugin.derain archive/ --out derained/ --device cuda

Outputs keep their names, formats and sizes (``--side-by-side``: input | derained, twice as wide); a folder's
tree is kept below ``--out``. Grayscale is derained as RGB and written back as grayscale, alpha is kept,
16-bit images are written as 16-bit. Videos (mp4, avi, mov, mkv) are decoded with OpenCV and re-encoded at
the source frame rate. Nothing is ever written onto an input; every output is written atomically.
``--gate auto`` (or a threshold) copies images and frames without rain unchanged (jdnet_plugin.gate) and
says how many were derained. Under torchrun (also with --nnodes) each rank takes every WORLD_SIZE-th input on
its own device (cuda:LOCAL_RANK): the files written are those of one process.
Exit codes: 0 all done, 1 some inputs failed (each reported with its reason), 2 bad command line or weights.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..gate import GateStats, gate_threshold
from ..inference import derain as derain_array
from ..io import IMAGE_EXTENSIONS, ImageReadError, read_image, write_image
from ..utils.atomic import atomic_copy
from ..video import VIDEO_EXTENSIONS, VideoReadError, VideoWriter, read_frames, video_info
from ..training.distributed import DistInfo, all_reduce, cleanup_distributed, init_distributed
from ._common import CLIError, add_model_args, device_from_args, inference_kwargs, model_from_args, run_cli

__all__ = ["main", "build_parser", "Job", "collect_jobs"]


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path

    @property
    def is_video(self) -> bool:
        return self.src.suffix.lower() in VIDEO_EXTENSIONS


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _expand(item: str, out: Path) -> tuple[list[tuple[Path, Path]], str | None]:
    """``[(file, relative output path)]`` of one INPUT, or an error message."""
    exts = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    path = Path(item)
    if path.is_file():
        return [(path, Path(path.name))], None
    if path.is_dir():
        # With --out inside this folder, a rerun must not derain the earlier outputs.
        skip = out if out != path.resolve() and _inside(out, path.resolve()) else None
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in exts
                       and not (skip and _inside(f.resolve(), skip)))
        return [(f, f.relative_to(path)) for f in files], None if files else f"{item}: folder holds no images or videos"
    matches = sorted(glob.glob(item, recursive=True))
    if not matches:
        return [], f"{item}: no such file or folder, and no file matches it"
    found = []
    for m in matches:
        sub, _ = _expand(m, out)
        found += sub if Path(m).is_file() else [(f, Path(m).name / rel) for f, rel in sub]
    return found, None


def collect_jobs(inputs: list[str], out: Path) -> tuple[list[Job], list[str]]:
    """Jobs for the INPUT arguments, and the INPUTs that name nothing; refuses writing onto an input."""
    out_resolved = out.resolve()
    jobs, errors, seen, by_dst = [], [], set(), {}
    for item in inputs:
        found, err = _expand(item, out_resolved)
        if err:
            errors.append(err)
        for src, rel in found:
            key = src.resolve()
            if key in seen:
                continue
            seen.add(key)
            dst = out / rel
            if dst.resolve() in by_dst:
                raise CLIError(f"{src} and {by_dst[dst.resolve()]} would both be written to {dst}; "
                               "derain them into separate --out folders")
            by_dst[dst.resolve()] = src
            jobs.append(Job(src, dst))
    for job in jobs:
        if job.dst.resolve() in seen:
            raise CLIError(f"refusing to overwrite the input {job.dst}: choose an --out folder that holds no inputs")
    return jobs, errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jdnet_plugin.derain", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders, or glob patterns")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--side-by-side", action="store_true", help="write input | derained side by side")
    p.add_argument("--gate", default="off", metavar="off|auto|T",
                   help="rain gate: derain only images and frames whose rain score is at least T ('auto': the "
                        "calibrated threshold); others are written unchanged (default off)")
    add_model_args(p)
    return p


class _Runner:
    def __init__(self, model, kwargs: dict, side_by_side: bool, batch_size: int, show: bool) -> None:
        self.model, self.kwargs, self.sbs, self.batch_size, self.show = model, kwargs, side_by_side, batch_size, show
        self.gated = kwargs.get("gate") is not None
        self.failed: list[str] = []
        self.written = 0

    def _derain(self, batch: np.ndarray) -> np.ndarray:
        out = derain_array(batch, self.model, **self.kwargs)
        return np.concatenate([batch, out], axis=2) if self.sbs else out

    def report(self, message: str) -> None:
        self.failed.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)

    def images(self, group: list[tuple[Job, np.ndarray]]) -> None:
        batch = np.stack([a[..., None] if a.ndim == 2 else a for _, a in group])  # grayscale as (H, W, 1)
        try:
            outs = self._derain(batch)
        except (RuntimeError, ValueError) as e:
            for job, _ in group:
                self.report(f"{job.src}: deraining failed: {e}")
            return
        derained = self.kwargs["gate_stats"].last if self.gated else [True] * len(group)
        for (job, _), y, was_derained in zip(group, outs, derained, strict=True):
            try:
                if not was_derained and not self.sbs:
                    atomic_copy(job.src, job.dst)  # passed by the rain gate: the file itself, not re-encoded
                else:
                    write_image(job.dst, y)  # (H, W, 1) is written as grayscale
                self.written += 1
            except (OSError, ValueError) as e:
                self.report(f"{job.src}: cannot write {job.dst}: {e}")

    def video(self, job: Job) -> None:
        try:
            info = video_info(job.src)
            width = info.width * (2 if self.sbs else 1)
            with VideoWriter(job.dst, info.fps, (width, info.height)) as writer, \
                    tqdm(total=info.frames or None, desc=job.src.name, unit="frame", leave=False,
                         disable=None if self.show else True) as bar:
                chunk: list[np.ndarray] = []
                for frame in read_frames(job.src):
                    chunk.append(frame)
                    if len(chunk) == self.batch_size:
                        self._write_frames(writer, chunk, bar)
                        chunk = []
                if chunk:
                    self._write_frames(writer, chunk, bar)
            self.written += 1
        except (VideoReadError, OSError, ValueError, RuntimeError) as e:
            self.report(str(e) if str(job.src) in str(e) else f"{job.src}: {e}")

    def _write_frames(self, writer: VideoWriter, chunk: list[np.ndarray], bar) -> None:
        for y in self._derain(np.stack(chunk)):
            writer.write(y)
        bar.update(len(chunk))


def _launched_ranks() -> tuple[int, int]:
    """``(LOCAL_RANK, WORLD_SIZE)`` as torchrun sets them; ``(0, 1)`` for a plain process."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise CLIError(f"bad LOCAL_RANK / WORLD_SIZE in the environment: {e}") from e


def _total(dist_info: DistInfo, counts: list[int]) -> list[int]:
    """``counts`` summed over the ranks (every rank's own under one process)."""
    if not dist_info.enabled:
        return counts
    return all_reduce(torch.tensor(counts, dtype=torch.long)).tolist()


def run(args: argparse.Namespace) -> int:
    kwargs = inference_kwargs(args)
    try:
        kwargs["gate"] = gate_threshold(args.gate)  # the threshold, or None without a gate
    except ValueError as e:
        raise CLIError(f"--gate: {e}") from e
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a folder")
    local_rank, _ = _launched_ranks()
    device = device_from_args(args, local_rank)
    # gloo on any device: the ranks only wait for each other and add up their counts.
    dist_info = init_distributed(device, backend="gloo")
    try:
        jobs, missing = collect_jobs(args.inputs, args.out)
        if not jobs:
            raise CLIError("nothing to derain: " + ("; ".join(missing) if missing else "no inputs"))
        model = model_from_args(args, device)
        if dist_info.enabled:
            dist.barrier()  # every rank has listed the inputs before any writes an output
        return _run_jobs(args, model, kwargs, jobs[dist_info.rank::dist_info.world_size], missing, dist_info)
    finally:
        cleanup_distributed()


def _run_jobs(args: argparse.Namespace, model, kwargs: dict, jobs: list[Job], missing: list[str],
              dist_info: DistInfo) -> int:
    if dist_info.is_main:
        for m in missing:
            print(f"error: {m}", file=sys.stderr)
    stats = GateStats()
    runner = _Runner(model, {**kwargs, "gate_stats": stats}, args.side_by_side, args.batch_size,
                     show=dist_info.is_main)
    group: list[tuple[Job, np.ndarray]] = []
    for job in tqdm(jobs, desc="derain", unit="file", disable=None if dist_info.is_main else True):
        if job.is_video:
            runner.video(job)
            continue
        try:
            img = read_image(job.src)
        except ImageReadError as e:
            runner.report(str(e))
            continue
        if group and (len(group) == args.batch_size or group[0][1].shape != img.shape
                      or group[0][1].dtype != img.dtype):
            runner.images(group)
            group = []
        group.append((job, img))
    if group:
        runner.images(group)
    written, total, failed, derained, passed = _total(dist_info, [
        runner.written, len(jobs), len(runner.failed), stats.derained, stats.passed])
    failed += len(missing)
    if dist_info.is_main:
        ranks = f" by {dist_info.world_size} processes" if dist_info.enabled else ""
        gate = (f" (rain gate {args.gate}: {derained} images or frames derained, {passed} without rain copied "
                "unchanged)" if runner.gated else "")
        print(f"{written} of {total} files derained into {args.out}{ranks}{gate}"
              + (f"; {failed} failed (see the errors above)" if failed else ""))
    return 1 if runner.failed or missing else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
