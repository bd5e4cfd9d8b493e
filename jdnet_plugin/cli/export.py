"""Export a JDNet checkpoint to TorchScript and/or ONNX, verified against the eager model.

Examples:
  python -m jdnet_plugin.export --weights runs/exp/best.pt --out jdnet.onnx
  python -m jdnet_plugin.export --weights best.pt --format both --out exported/jdnet --check-size 320x480

--out: the file to write, or with --format both the path without extension (.pt and .onnx are added).
Exit codes: 0 exported and verified, 2 bad command line, weights, or an export that failed verification.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..checkpoint import load_model
from ..exporting import DEFAULT_CHECK_SIZES, ONNX_MIN_OPSET, ExportError, export_onnx, export_torchscript
from ..registry import DEFAULT_WEIGHTS
from ._common import CLIError, run_cli

__all__ = ["main", "build_parser"]


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jdnet_plugin.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--weights", default=DEFAULT_WEIGHTS, help=f"checkpoint path or registered weights name (default {DEFAULT_WEIGHTS!r})")
    a("--out", required=True, type=Path, help="output file (.pt for TorchScript, .onnx for ONNX)")
    a("--format", choices=("auto", "torchscript", "onnx", "both"), default="auto",
      help="auto: from the --out extension (.onnx -> ONNX, anything else TorchScript)")
    a("--opset", type=int, default=ONNX_MIN_OPSET, help=f"ONNX opset (>= {ONNX_MIN_OPSET})")
    a("--static", action="store_true", help="ONNX with fixed batch/height/width (the --example-size)")
    a("--example-size", type=_size, default=(64, 64), metavar="HxW", help="size traced (default 64x64)")
    a("--check-size", type=_size, action="append", metavar="HxW",
      help="sizes the exported model is verified at (repeatable; default "
           + ", ".join(f"{h}x{w}" for h, w in DEFAULT_CHECK_SIZES) + ")")
    a("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| (default 1e-4)")
    return p


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt == "auto":
        fmt = "onnx" if args.out.suffix.lower() == ".onnx" else "torchscript"
    if args.opset < ONNX_MIN_OPSET:
        raise CLIError(f"--opset must be >= {ONNX_MIN_OPSET}, got {args.opset}")
    model = load_model(args.weights, device="cpu")  # its documented errors are the user's (run_cli)
    small = [f"{h}x{w}" for h, w in [args.example_size, *(args.check_size or [])] if min(h, w) < model.min_size]
    if small:
        raise CLIError(f"sizes {', '.join(small)} are below the model's minimum side {model.min_size}")
    jobs = {"torchscript": [("torchscript", args.out)], "onnx": [("onnx", args.out)],
            "both": [("torchscript", args.out.with_suffix(".pt")), ("onnx", args.out.with_suffix(".onnx"))]}[fmt]
    for kind, out in jobs:
        t = time.perf_counter()
        if kind == "onnx":
            res = export_onnx(model, out, opset=args.opset, example_size=args.example_size,
                              dynamic=not args.static, check_sizes=args.check_size, atol=args.atol)
        else:
            res = export_torchscript(model, out, example_size=args.example_size,
                                     check_sizes=args.check_size or DEFAULT_CHECK_SIZES, atol=args.atol)
        sizes = ", ".join(f"{h}x{w}" for h, w in res.checked_sizes)
        print(f"{res.format}: {res.path} (max |exported - eager| {res.max_abs_diff:.2g} at {sizes}; "
              f"{time.perf_counter() - t:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, errors=(ExportError, OSError))
