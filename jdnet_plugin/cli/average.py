"""Average the weights of several checkpoints of one architecture into one (a model soup).

Examples:
  python -m jdnet_plugin.average runs/a/final.pt runs/b/final.pt --out soup.pt
  python -m jdnet_plugin.average runs/a/final.pt runs/b/final.pt --coefficients 2 1 --out soup.pt

The result is a checkpoint of this project (it loads with --weights soup.pt everywhere) that records its
sources and coefficients. Exit codes: 0 written, 2 bad command line or checkpoints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..averaging import average_models, check_coefficients
from ..checkpoint import save_checkpoint, weights_file
from ._common import CLIError, run_cli

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jdnet_plugin.average", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="checkpoint paths or registered weights names (at least two)")
    p.add_argument("--out", required=True, type=Path, help="the checkpoint to write")
    p.add_argument("--coefficients", type=float, nargs="+", metavar="C",
                   help="one non-negative number per source, normalised to sum to 1 (default: equal)")
    return p


def run(args: argparse.Namespace) -> int:
    if len(args.sources) < 2:
        raise CLIError("give at least two checkpoints to average")
    try:
        coefs = check_coefficients(args.coefficients, len(args.sources))
    except ValueError as e:
        raise CLIError(f"--coefficients: {e}") from None
    # Each source resolved once (a shipped file checksummed once); later errors name the resolved file.
    files = [str(weights_file(s)) for s in args.sources]
    model = average_models(files, coefs)
    save_checkpoint(args.out, model, averaged_from=files, average_coefficients=coefs)
    print(f"{args.out}: the average of {len(files)} checkpoints")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)
