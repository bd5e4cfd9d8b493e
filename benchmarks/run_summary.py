"""The summary of a training run that goes in the repo beside its config: what ran, how long, on what, and
its losses and validation scores along the way (from the run folder's ``config.yaml`` and ``log.jsonl``).

    python benchmarks/run_summary.py runs/rain-comparison-broad --name rain-comparison-broad

Writes ``benchmarks/results/train-run-<name>.json`` and ``.md``. Wall time counts only the time the run was
training: gaps between a stop and its resume are left out (reported as ``resumes``).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from _results import machine_info, machine_text, result_tag, write_results

LOSS_WINDOW = 100  # steps averaged per reported training loss


def read_log(path: Path) -> list[dict]:
    """The events of a ``log.jsonl``; a line cut short by a kill (the last one) is skipped."""
    lines = path.read_text().splitlines()
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return events


def summarise(run: Path) -> dict:
    """The summary of one run folder."""
    log = run / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"error: {run} has no log.jsonl: not a training run folder")
    events = read_log(log)
    steps = [e for e in events if "train_loss" in e]
    starts = [e for e in events if e.get("event") in ("start", "resume")]
    if not steps or not starts:
        raise SystemExit(f"error: {log} holds no training steps")
    # Wall time: sum over segments (start event -> last logged step before the next start).
    wall, seg_start, last = 0.0, None, None
    for e in events:
        if e.get("event") in ("start", "resume"):
            if seg_start is not None and last is not None:
                wall += last - seg_start
            seg_start, last = e["time"], e["time"]
        elif "time" in e:
            last = e["time"]
    wall += (last or seg_start) - seg_start
    windows: dict[int, list[float]] = {}
    for e in steps:
        windows.setdefault((e["step"] - 1) // LOSS_WINDOW, []).append(e["train_loss"])
    return {
        "run": str(run),
        "config": yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None,
        "train_size": starts[0].get("train_size"),
        "params": starts[0].get("params"),
        "steps_done": steps[-1]["step"],
        "steps_planned": starts[0].get("steps"),
        "resumes": len(starts) - 1,
        "wall_min": round(wall / 60, 1),
        "median_steps_per_s": round(statistics.median(e["steps_per_s"] for e in steps if "steps_per_s" in e), 3),
        "train_loss_per_100_steps": {f"{k * LOSS_WINDOW + 1}-{(k + 1) * LOSS_WINDOW}": round(statistics.mean(v), 4)
                                     for k, v in sorted(windows.items())},
        "validation": [{k: v for k, v in e.items() if k == "step" or k.startswith("val_")}
                       for e in events if "val_psnr" in e],
        "machine": starts[-1].get("machine") or f"not logged; summarised on {machine_text(machine_info())}",
    }


def markdown(name: str, s: dict) -> str:
    cfg = s["config"] or {}
    lines = [f"# Training run `{name}`", "",
             f"{s['steps_done']} / {s['steps_planned']} steps, {s['wall_min']} min training "
             f"({s['resumes']} resume(s)), median {s['median_steps_per_s']} steps/s, on {s['machine']}; "
             f"{s['train_size']} training images, {s['params']:,} parameters.", "",
             "config: " + ", ".join(f"{k}={cfg[k]}" for k in ("preset", "synthetic_rain", "clean_fraction",
                                                               "render_scale", "patch_size", "batch_size", "steps",
                                                               "loss", "lr", "ema_decay", "init", "seed")
                                 if k in cfg), "",
             "| steps | mean training loss |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["train_loss_per_100_steps"].items()]
    if s["validation"]:
        lines += ["", "| step | validation PSNR-Y | SSIM-Y |", "|---|---|---|"]
        lines += [f"| {v['step']} | {v.get('val_psnr', float('nan')):.2f} | {v.get('val_ssim', float('nan')):.4f} |"
                  for v in s["validation"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder (config.yaml, log.jsonl)")
    p.add_argument("--name", help="results name (default: the folder's name)")
    args = p.parse_args(argv)
    try:
        name = result_tag(args.name or args.run.resolve().name)
    except argparse.ArgumentTypeError as e:
        p.error(f"--name: {e}")
    s = summarise(args.run)
    write_results(f"train-run-{name}", s, markdown(name, s))
    print(markdown(name, s))


if __name__ == "__main__":
    main()
