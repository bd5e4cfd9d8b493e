"""What the derain and evaluate CLIs share: model options, loading weights, reporting errors."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from ..checkpoint import CheckpointError, load_model
from ..inference import DTYPES, MAX_PIXELS, OVERLAP
from ..registry import DEFAULT_WEIGHTS, list_weights

__all__ = ["CLIError", "add_model_args", "model_from_args", "inference_kwargs", "fail", "run_cli"]


class CLIError(Exception):
    """A problem with the command line or its inputs: printed as ``error: ...``, exit code 2."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--weights", metavar="W", help="checkpoint path (this project's or the authors' .pth/.pt) or a registered "
                                     f"weights name (default: {DEFAULT_WEIGHTS!r})")
    a("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    a("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype (half types run under autocast)")
    a("--tile", type=int, metavar="N", help="process N x N overlapping tiles (default: only for images over "
                                            "--max-pixels)")
    a("--overlap", type=int, default=OVERLAP, metavar="N",
      help=f"pixels shared by neighbouring tiles (default {OVERLAP})")
    a("--max-pixels", type=int, default=None, metavar="N",
      help=f"pixels per forward call before tiling kicks in (default: {MAX_PIXELS}, or fewer for models that "
           "would need more than about 2 GB for that)")
    a("--batch-size", type=int, default=4, metavar="N", help="images, frames or tiles per forward call")


def model_from_args(args: argparse.Namespace):
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"bad --device {args.device!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device} asked for, but CUDA is not available here")
    weights = args.weights
    if weights is None and DEFAULT_WEIGHTS not in list_weights():
        raise CLIError("no default weights are shipped yet: pass --weights with a checkpoint "
                       "(from python -m jdnet_plugin.train, or the authors' JDNet .pth) or a registered name")
    try:
        return load_model(weights or DEFAULT_WEIGHTS, device=device)
    except (FileNotFoundError, KeyError, CheckpointError, ValueError) as e:
        raise CLIError(str(e).strip("'\"")) from e


def inference_kwargs(args: argparse.Namespace) -> dict:
    for name in ("tile", "batch_size", "max_pixels"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.overlap < 0 or (args.tile is not None and args.tile <= args.overlap):
        raise CLIError(f"--overlap must be >= 0 and smaller than --tile, got overlap {args.overlap}, "
                       f"tile {args.tile}")
    return dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, dtype=args.dtype,
                max_pixels=args.max_pixels)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and ``run``; a :class:`CLIError` or Ctrl-C becomes ``error: ...`` and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CLIError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted")
