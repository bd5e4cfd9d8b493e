"""How far the fast forward is from this machine's FLOP limit.

The network's FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the module path
(shapes only, on the meta device; its convolutions: the attention's element-wise work is not counted).
The limit is the best rate of a large square fp32 GEMM (``--gemm-size``, best of ``--gemm-repeats``) at
the same thread count: the FLOPs at that rate give the time below which no implementation built on
these convolutions can go.
The fast forward is timed in-process after a warm-up at the same size (best of ``--iters``).

    python benchmarks/flop_limit.py                       # both presets at 320x480, 2 threads

Writes ``benchmarks/results/flop-limit-<tag>.json`` and ``.md`` (``--tag``, default ``cpu``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _results import machine_info, machine_text, parse_size, result_tag, write_results  # also puts the repo on sys.path


def network_flops(preset: str, size: tuple[int, int]) -> float:
    """FLOPs of one forward of ``preset`` on a ``1x3xHxW`` image (the reference module path, on the meta device:
    shapes only, no arithmetic)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from jdnet_plugin.registry import create_model

    model = create_model(preset).eval().set_attention_impl("reference").to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, *size, device="meta"))
    return float(counter.get_total_flops())


def train_step_flops(preset: str, batch: int, patch: int) -> float:
    """FLOPs of one training step of ``preset`` (forward and backward) on ``batch`` crops of ``patch x patch``,
    counted as :func:`network_flops` counts them (the loss and the Adam update, both small, are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from jdnet_plugin.registry import create_model

    model = create_model(preset).train().set_attention_impl("reference").to("meta")
    x = torch.empty(batch, 3, patch, patch, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def gemm_rate(n: int, repeats: int) -> float:
    """Best FLOP/s of an ``n x n`` fp32 matrix product."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fast_forward_seconds(preset: str, size: tuple[int, int], iters: int) -> float:
    """Best in-process time of the fast no-grad forward, after one warm-up at this size."""
    import torch

    from jdnet_plugin.registry import create_model

    torch.manual_seed(0)
    model = create_model(preset).eval()
    x = torch.rand(1, 3, *size)
    with torch.inference_mode():
        model(x)
        return min(_timed(lambda: model(x)) for _ in range(iters))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="jdnet, jdnet-lite (repeatable; default both)")
    p.add_argument("--size", type=parse_size, default=(320, 480), help="HxW (default 320x480)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=3, help="timed forwards (best)")
    p.add_argument("--gemm-size", type=int, default=4096)
    p.add_argument("--gemm-repeats", type=int, default=5)
    p.add_argument("--tag", type=result_tag, default="cpu")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rate = gemm_rate(args.gemm_size, args.gemm_repeats)
    h, w = args.size
    rows = []
    for preset in args.preset or ["jdnet", "jdnet-lite"]:
        flops = network_flops(preset, args.size)
        seconds = fast_forward_seconds(preset, args.size, args.iters)
        rows.append({"preset": preset, "gflop": flops / 1e9, "limit_seconds": flops / rate,
                     "fast_seconds": seconds, "times_the_limit": seconds * rate / flops})
        print(rows[-1], flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(), "threads": args.threads,
              "size": [h, w], "gemm_gflop_per_s": rate / 1e9, "loadavg_at_end": os.getloadavg(),
              "torch": torch.__version__, "note": args.note, "rows": rows}
    lines = [f"# JDNet against the FLOP limit ({result['date']})", "",
             f"`{result['command']}`; torch {result['torch']}, {machine_text(result['machine'])}, {args.threads} "
             f"threads; fp32 GEMM {args.gemm_size}^3: {rate / 1e9:.0f} GFLOP/s; load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['loadavg_at_end'])}. {args.note}", "",
             "| preset | size | GFLOP (convolutions) | limit at the GEMM rate (s) | fast forward (s) | x the limit |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {h}x{w} | {r['gflop']:.1f} | {r['limit_seconds']:.2f} | {r['fast_seconds']:.2f} | "
              f"{r['times_the_limit']:.2f} |" for r in rows]
    write_results(f"flop-limit-{args.tag}", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
