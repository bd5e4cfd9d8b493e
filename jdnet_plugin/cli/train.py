"""``python -m jdnet_plugin.train``: train JDNet from a YAML config plus command-line overrides.

Examples::

    python -m jdnet_plugin.train --data Rain100L/train --val Rain100L/test --out runs/r100l
    python -m jdnet_plugin.train --data clean_photos/ --synthetic-rain mixed --preset jdnet-lite \\
        --batch-size 16 --steps 20000 --out runs/lite
    torchrun --nproc_per_node 4 -m jdnet_plugin.train --config my.yaml

Rerunning the same command resumes from ``OUT/latest.pt``. Exit codes: 0 done, 2 bad input, 130/143 stopped
by SIGINT/SIGTERM (``latest.pt`` saved).
"""
from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..training.config import CHOICES
from ..utils.host_memory import keep_freed_memory
from ._common import run_cli

__all__ = ["main", "build_parser", "overrides_from_args"]


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jdnet_plugin.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults: jdnet_plugin/configs/train_default.yaml (the authors' recipe).")
    a = p.add_argument
    a("--config", help="YAML file of settings (keys of train_default.yaml); flags override it")
    a("--data", nargs="+", action="extend", metavar="DIR",
      help="training folder(s): paired (rain/ + norain/), side-by-side, or clean images with --synthetic-rain")
    a("--val", metavar="DIR", help="paired folder for validation PSNR/SSIM (Y channel) and best.pt")
    a("--val-max", type=int, metavar="N", help="validate on the first N images only")
    a("--out", metavar="DIR", help="run folder: checkpoints, config.yaml, log.jsonl, tb/")
    a("--preset", help="model preset: jdnet, jdnet-lite, jdnet-no-sa, jdnet-no-sa-sc")
    a("--init", metavar="WEIGHTS", help="start from these weights (registered name such as 'default', or a "
      "checkpoint path); the optimiser starts fresh")
    for name in ("channels", "units", "scales"):
        a(f"--{name}", type=int, help=f"override the preset's {name}")
    a("--model", type=_key_value, action="append", metavar="KEY=VALUE", help="any other JDNetConfig parameter")
    a("--steps", type=int, help="training steps (default: 1000 * pairs / batch size, the authors')")
    a("--batch-size", type=int, help="batch size per process")
    a("--patch-size", type=int, help="random crop size")
    a("--loss", metavar="LOSS", help=f"{' | '.join(CHOICES['loss'])}, or a weighted sum such as 'ssim+0.5*l1'")
    a("--lr", type=float, help="Adam learning rate")
    a("--ema-decay", type=float, metavar="D", help="keep an exponential moving average of the weights (e.g. "
      "0.999): validation measures it and every checkpoint's model is it (the trained weights: train_model); 0: off")
    a("--device", help="auto | cpu | cuda | cuda:N")
    a("--seed", type=int)
    a("--workers", type=int, help="DataLoader worker processes")
    a("--threads", type=int, help="torch CPU threads per process")
    a("--synthetic-rain", metavar="PRESET",
      help="--data holds clean images; add this rain (a preset of jdnet_plugin/configs/rain_presets.yaml: "
           "broad, mixed, light, heavy, storm, ...)")
    a("--clean-fraction", type=float, metavar="P",
      help="with --synthetic-rain: share of crops left dry (input = target), so clean images pass unchanged")
    a("--render-scale", type=float, nargs="+", metavar="S",
      help="with --synthetic-rain: draw the rain on a window S times the crop, or LOW HIGH (log-uniform), then "
           "shrink it to the crop: thinner, fainter streaks over finer scenery (default 1)")
    a("--format", choices=CHOICES["format"], help="data format (detected by default)")
    a("--pair-dirs", nargs=2, metavar=("RAINY", "CLEAN"), help="names of the rainy and clean sub-folders")
    a("--save-every", type=int, metavar="N", help="write latest.pt every N steps")
    a("--snapshot-every", type=int, metavar="N", help="write step_<N>.pt every N steps (0: never)")
    a("--val-every", type=int, metavar="N")
    a("--log-every", type=int, metavar="N")
    a("--amp", choices=CHOICES["amp"])
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    a("--attention", choices=CHOICES["attention"])
    for flag in ("hflip", "vflip", "rot90", "cache", "tensorboard", "progress"):
        a(f"--{flag}", action=argparse.BooleanOptionalAction, default=None)
    a("--set", type=_key_value, action="append", metavar="KEY=VALUE", help="any setting of the config file")
    a("--fresh", action="store_true", help="ignore and delete the checkpoints in --out; start over")
    a("--print-config", action="store_true", help="print the resolved settings and exit")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (None = not given)."""
    skip = {"config", "fresh", "print_config", "model", "set", "channels", "units", "scales"}
    out = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.set:
        out.update(dict(args.set))
    model = dict(args.model or [])
    model.update({k: getattr(args, k) for k in ("channels", "units", "scales") if getattr(args, k) is not None})
    if model:
        out["model"] = {**out.get("model", {}), **model}
    return out


def _run(args: argparse.Namespace) -> int:
    from ..training import Trainer, load_config
    from ..training.distributed import resolve_device

    cfg = load_config(args.config, overrides_from_args(args))
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if resolve_device(cfg.device).type == "cpu":
        # A command owns its process (see model_from_args): a jdnet step on the CPU spent about 40 % of its
        # CPU time in the kernel, mostly zeroing pages that glibc had just given back to it.
        keep_freed_memory(large_blocks=True)
    return int(Trainer(cfg, fresh=args.fresh).fit()["exit_code"])


def main(argv: list[str] | None = None) -> int:
    # FloatingPointError: the loss went non-finite (a learning rate too high for the data), reported as such
    return run_cli(build_parser(), _run, argv, errors=(FloatingPointError,))


if __name__ == "__main__":
    raise SystemExit(main())
