"""``python -m jdnet_plugin.evaluate --data DIR --weights W``: PSNR/SSIM of JDNet on a paired test set.

Examples::

    python -m jdnet_plugin.evaluate --data ../shared/data/rain100L_test --weights runs/r100l/best.pt \\
        --json results.json --csv results.csv --save-images derained/

Every rainy/clean pair of DIR (``rain/`` + ``norain/`` sub-folders, Rain100L's ``rain-001.png`` /
``norain-001.png`` names, and the other layouts of ``jdnet_plugin.data``) is derained and scored in both
conventions of ``docs/evaluation.md``: Y channel as the published tables (8-bit, BT.601) and RGB as the
JDNet authors. The means are printed next to the input's own scores (no deraining). ``--json`` and ``--csv``
get per-image results (non-finite PSNR, for identical images, is written as null / empty).
Exit codes: 0 done, 1 some pairs failed (each reported), 2 bad command line, data or weights.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..io import to_uint8, write_rgb
from ..metrics import PAIR_METRICS, image_scores, pair_files, paired_dataset, score_pairs
from ..utils.atomic import atomic_write_text
from ._common import CLIError, add_model_args, inference_kwargs, model_from_args, run_cli

__all__ = ["main", "build_parser", "METRICS", "score"]

METRICS = PAIR_METRICS
score = image_scores


def _pairs(data: Path):
    from ..data import DatasetError

    try:
        return paired_dataset(data)
    except (DatasetError, NotADirectoryError, OSError) as e:
        raise CLIError(f"--data {data}: {e}") from e


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _means(rows: list[dict], key: str) -> dict[str, float]:
    return {m: float(np.mean([r[key][m] for r in rows])) for m in METRICS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jdnet_plugin.evaluate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="paired test set")
    p.add_argument("--json", type=Path, metavar="FILE", help="write means and per-image results as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write per-image results as CSV")
    p.add_argument("--save-images", type=Path, metavar="DIR", help="write the derained images (8-bit, named as the rainy files)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N pairs only")
    add_model_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    kwargs = inference_kwargs(args)
    ds = _pairs(args.data)
    n = len(ds) if not args.limit else min(args.limit, len(ds))
    pairs = [pair_files(ds, i) for i in range(n)]
    if args.save_images is not None:
        inputs = {p.resolve() for pair in pairs for p in pair}
        clash = next((r for r, _ in pairs if (args.save_images / r.name).resolve() in inputs), None)
        if clash is not None:
            raise CLIError(f"--save-images {args.save_images} would overwrite the input {clash}")
    model = model_from_args(args)
    rows, failed = [], []
    for s in tqdm(score_pairs(ds, model, limit=n, keep_going=True, **kwargs), total=n, desc="evaluate",
                  unit="image", disable=None):
        rain_path, clean_path = pairs[s.index]
        try:
            if s.error is not None:
                raise ValueError(s.error)
            rows.append({"name": rain_path.name, "rain": str(rain_path), "clean": str(clean_path),
                         "input": s.input, "derained": s.derained})
            if args.save_images is not None:
                write_rgb(args.save_images / rain_path.name, to_uint8(s.output))
        except (ValueError, OSError) as e:
            failed.append(f"{rain_path.name}: {e}")
            tqdm.write(f"error: {rain_path.name}: {e}", file=sys.stderr)
    if not rows:
        raise CLIError(f"no pair of {args.data} could be evaluated")
    means = {"input": _means(rows, "input"), "derained": _means(rows, "derained")}

    print(f"{args.data}: {len(rows)} pairs" + (f" ({len(failed)} failed)" if failed else "")
          + f", weights {args.weights or 'default'}")
    print(f"{'':10s}" + "".join(f"{m.upper().replace('_', '-'):>10s}" for m in METRICS))
    for key in ("input", "derained"):
        print(f"{key:10s}" + "".join(f"{means[key][m]:10.{2 if m.startswith('psnr') else 4}f}" for m in METRICS))
    print("Y: published-table convention (8-bit BT.601 Y); RGB: the JDNet authors' (see docs/evaluation.md)")

    if args.json is not None:
        doc = {"data": str(args.data), "weights": args.weights or "default", "self_ensemble": args.self_ensemble,
               "pairs": len(rows), "failed": failed,
               "mean": means,
               "images": [{**r, "input": {k: _finite(v) for k, v in r["input"].items()},
                           "derained": {k: _finite(v) for k, v in r["derained"].items()}} for r in rows]}
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if args.csv is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", *METRICS, *(f"input_{m}" for m in METRICS)])
        for r in rows:
            w.writerow([r["name"], *(_finite(r["derained"][m]) for m in METRICS),
                        *(_finite(r["input"][m]) for m in METRICS)])
        atomic_write_text(args.csv, buf.getvalue())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
