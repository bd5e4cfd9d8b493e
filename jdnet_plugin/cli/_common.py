"""What the derain and evaluate CLIs share: model options, loading weights, reporting errors."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

from ..checkpoint import CheckpointError, load_model
from ..ensemble import FLIPS, FlipEnsemble
from ..errors import UnknownNameError
from ..inference import DTYPES, MAX_PIXELS, OVERLAP
from ..registry import DEFAULT_WEIGHTS
from ..utils.host_memory import keep_freed_memory

__all__ = ["CLIError", "add_model_args", "device_from_args", "model_from_args", "inference_kwargs", "fail",
           "error_message", "run_cli"]


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
    a("--self-ensemble", choices=("off", *FLIPS), default="off",
      help="average the model over mirrored copies: h (left-right, 2x the time) or hv (also upside down, 4x)")


def device_from_args(args: argparse.Namespace, local_rank: int = 0) -> torch.device:
    """``--device`` (default: CUDA when available); an unnumbered ``cuda`` is this process's GPU under torchrun."""
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise CLIError(f"bad --device {args.device!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device} asked for, but CUDA is not available here")
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def model_from_args(args: argparse.Namespace, device: torch.device | None = None):
    """The model of ``--weights`` on ``device``, in a :class:`FlipEnsemble` with ``--self-ensemble``. A command
    owns its process, so on the CPU it also keeps freed heap memory for reuse
    (:func:`jdnet_plugin.utils.host_memory.keep_freed_memory`), which a library call never does by itself."""
    device = device or device_from_args(args)
    if device.type == "cpu":
        keep_freed_memory()
    model = load_model(args.weights or DEFAULT_WEIGHTS, device=device)
    flips = getattr(args, "self_ensemble", "off")
    return model if flips == "off" else FlipEnsemble(model, flips)


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


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data import DatasetError
    from ..io import ImageReadError
    from ..training.config import ConfigError
    from ..video import VideoReadError

    return (CLIError, ConfigError, DatasetError, CheckpointError, ImageReadError, VideoReadError, UnknownNameError,
            FileNotFoundError, NotADirectoryError)


def error_message(e: BaseException) -> str:
    """The one line a user sees; an error raised in a DataLoader worker keeps only the original message."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Parse ``argv`` and ``run``: the user's errors (:class:`CLIError`, the package's documented error types
    and ``errors``) and Ctrl-C become one line ``error: ...`` and exit code 2; anything else is a bug and
    keeps its traceback."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except _user_errors() + tuple(errors) as e:
        return fail(error_message(e))
    except KeyboardInterrupt:
        return fail("interrupted")
