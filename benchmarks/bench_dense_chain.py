"""The dense chain's training path against the authors' concatenation, in one process, alternating.

A training step (forward, negative SSIM, backward; no optimiser) of ``--preset`` with the dense chain's fusions as
GEMMs over features made once (``impl="fast"``) and with all earlier features concatenated at every unit
(``impl="reference"``, the authors' code); everything else the same fast path. Prints the seconds per step of each
pair and their ratio.

    python benchmarks/bench_dense_chain.py --preset jdnet --batch 16 --patch 64 --pairs 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import time

from _results import machine_info, machine_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="jdnet")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from bench_train import make_model_and_images

    model, rain, clean = make_model_and_images(argparse.Namespace(**vars(args), impl="fast", device="cpu"))
    from jdnet_plugin.losses import ssim_loss  # importable once the call above has put the repository on sys.path

    def step(impl: str) -> float:
        model.derain_net.impl = impl
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        ssim_loss(model(rain), clean).backward()
        return time.perf_counter() - t

    step("fast"), step("reference")  # warm-up
    times: dict[str, list[float]] = {"fast": [], "reference": []}
    for i in range(args.pairs):
        for impl in ("reference", "fast") if i % 2 == 0 else ("fast", "reference"):
            times[impl].append(step(impl))
    ratios = [r / f for r, f in zip(times["reference"], times["fast"])]
    print(f"{args.preset}, {args.batch} x {args.patch}x{args.patch}, {args.threads} threads, "
          f"{machine_text(machine_info())}")
    print(json.dumps({"seconds_fast": [round(t, 2) for t in times["fast"]],
                      "seconds_reference": [round(t, 2) for t in times["reference"]],
                      "ratios": [round(r, 2) for r in ratios]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
