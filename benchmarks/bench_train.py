"""Training steps per second of JDNet at the authors' patch size (64x64), fast against reference, and against
the step's FLOP limit.

A step is forward, the negative-SSIM loss (the authors' default), backward and an Adam update, on
random images. Each (preset, impl) runs in a fresh subprocess, alternating, median of ``--repeats``.
The FLOP limit follows ``flop_limit.py``'s rule: the step's FLOPs (``train_step_flops``, convolutions and
matrix products of forward and backward) at the rate of a large square fp32 GEMM on ``--threads`` threads.

    python benchmarks/bench_train.py                     # both presets, batch 16, 2 threads
    python benchmarks/bench_train.py --preset jdnet --profile 20   # where one step's time goes

Writes ``benchmarks/results/train-<tag>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import ROOT, machine_info, machine_text, result_tag, write_results
from flop_limit import gemm_rate, train_step_flops



def make_model_and_images(args: argparse.Namespace):
    """``args.preset`` in training mode (``args.impl``, ``args.threads`` threads) and a fixed random batch of
    rainy and clean images, on ``args.device``."""
    import torch

    sys.path.insert(0, str(ROOT))
    from jdnet_plugin.registry import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset).train().set_attention_impl(args.impl).to(args.device)
    g = torch.Generator().manual_seed(1)
    rain = torch.rand(args.batch, 3, args.patch, args.patch, generator=g).to(args.device)
    clean = torch.rand(args.batch, 3, args.patch, args.patch, generator=g).to(args.device)
    return model, rain, clean


def make_step(args: argparse.Namespace):
    """One training step of ``args.preset`` (forward, negative SSIM, backward, Adam) on fixed random images, as a
    function returning the loss."""
    import torch

    model, rain, clean = make_model_and_images(args)
    from jdnet_plugin.losses import ssim_loss  # importable once the call above has put the repository on sys.path
    if args.device == "cpu":
        from jdnet_plugin.utils.host_memory import keep_freed_memory
        keep_freed_memory(large_blocks=True)  # as python -m jdnet_plugin.train does (JDNET_KEEP_FREED_MEMORY=0: off)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = ssim_loss(model(rain), clean)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def child(args: argparse.Namespace) -> None:
    import torch

    step = make_step(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    step()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    print(json.dumps({"seconds_per_step": (time.perf_counter() - t) / args.steps}))


def profile(args: argparse.Namespace) -> str:
    """Where one step's time goes (after a warm-up step): the ``args.profile`` operators with the most self time,
    then the same by input shape, as markdown tables."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = make_step(args)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    lines = [f"One training step of {args.preset} ({args.impl}), {args.batch} x {args.patch}x{args.patch}, "
             f"{args.threads} threads: {total / 1e6:.2f} s of operator self time."]
    for by_shape in (False, True):
        events = sorted(prof.key_averages(group_by_input_shape=by_shape), key=lambda e: -e.self_cpu_time_total)
        lines += ["", "| operator | calls | input shapes | self time (ms) | share |" if by_shape else
                  "| operator | calls | self time (ms) | share |",
                  "|---|---|---|---|---|" if by_shape else "|---|---|---|---|"]
        for e in events[:args.profile]:
            shapes = [", ".join(str(tuple(s)) for s in e.input_shapes if s)] if by_shape else []
            lines.append("| " + " | ".join([e.key, str(e.count), *shapes, f"{e.self_cpu_time_total / 1e3:.0f}",
                                            f"{e.self_cpu_time_total / total:.1%}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="default: jdnet and jdnet-lite")
    p.add_argument("--impl", choices=("all", "fast", "fast-pytorch", "reference"), default="all",
                   help="fast-pytorch: the fast path without its native kernels (JDNET_NATIVE=0)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default="PASSIVE")
    p.add_argument("--tag", type=result_tag, default="cpu")
    p.add_argument("--note", default="")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead: profile one step in this process (first --preset, --impl fast unless given) and "
                        "print its N costliest operators by input shape")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.profile:
        args.preset = (args.preset or ["jdnet"])[0]
        args.impl = "fast" if args.impl == "all" else args.impl
        if args.impl == "fast-pytorch":
            os.environ["JDNET_NATIVE"] = "0"
        args.impl = args.impl.split("-")[0]
        print(profile(args))
        return 0
    if args.child:
        args.preset = args.preset[0]
        child(args)
        return 0
    import torch

    impls = ["fast", "fast-pytorch", "reference"] if args.impl == "all" else [args.impl]
    torch.set_num_threads(args.threads)
    rate = gemm_rate(4096, 3) if args.device == "cpu" else None
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": args.omp_wait_policy}
    rows = []
    for preset in args.preset or ["jdnet", "jdnet-lite"]:
        runs: dict[str, list[float]] = {i: [] for i in impls}
        for r in range(args.repeats):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                cmd = [sys.executable, __file__, "--child", "--preset", preset, "--impl", impl.split("-")[0],
                       "--batch", str(args.batch), "--patch", str(args.patch), "--steps", str(args.steps),
                       "--threads", str(args.threads), "--device", args.device]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**env, "JDNET_NATIVE": "0"} if impl == "fast-pytorch" else env)
                if proc.returncode:
                    print(f"{preset} {impl}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                sec = json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]
                runs[impl].append(sec)
                print(f"{preset} {impl}: {sec:.3f} s/step", flush=True)
        row = {"preset": preset, "batch": args.batch, "patch": args.patch, "threads": args.threads,
               "device": args.device}
        for impl, secs in runs.items():
            if secs:
                med = statistics.median(secs)
                row[impl] = {"seconds_per_step_median": med, "steps_per_s": 1 / med, "seconds_all": secs}
        if rate:
            flops = train_step_flops(preset, args.batch, args.patch)
            row["step_gflop"], row["gemm_gflops"], row["flop_limit_s"] = flops / 1e9, rate / 1e9, flops / rate
        if all(i in row for i in ("fast", "reference")):
            row["speedup"] = row["reference"]["seconds_per_step_median"] / row["fast"]["seconds_per_step_median"]
        rows.append(row)
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(),
              "omp_wait_policy": args.omp_wait_policy, "loadavg_at_end": os.getloadavg(),
              "torch": torch.__version__, "note": args.note, "rows": rows}
    lines = [f"# JDNet training-step benchmark ({result['date']})", "",
             f"`{result['command']}`; torch {result['torch']}, {machine_text(result['machine'])}, load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['loadavg_at_end'])}. {args.note}", "",
             "| preset | batch x patch | impl | s/step (median) | steps/s | speedup | x FLOP limit |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for impl in impls:
            if impl in row:
                sp = f"{row['speedup']:.1f}x" if impl == "fast" and "speedup" in row else ""
                sec = row[impl]["seconds_per_step_median"]
                limit = (f"{sec / row['flop_limit_s']:.1f}x ({row['step_gflop']:.0f} GFLOP at "
                         f"{row['gemm_gflops']:.0f} GFLOP/s: {row['flop_limit_s']:.2f} s)" if "flop_limit_s" in row else "")
                lines.append(f"| {row['preset']} | {row['batch']} x {row['patch']}x{row['patch']} | {impl} | "
                             f"{sec:.3f} | {row[impl]['steps_per_s']:.3f} | {sp} | {limit} |")
    write_results(f"train-{args.tag}", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
