"""Inference speed and peak memory of JDNet: the fast path against the straightforward computation.

Every measurement runs in a fresh subprocess (so its peak RSS, ``resource.getrusage``, is its own):
build the preset with fixed random weights, warm up on a 64x64 image, then time ``model(x)`` under
``torch.inference_mode`` at the given size. Fast and reference runs alternate and the median of
``--repeats`` is reported, so both see the same machine load; the outputs of the two are compared.

    python benchmarks/bench_inference.py                      # both presets at 320x480, 2 threads
    python benchmarks/bench_inference.py --preset jdnet-lite --size 1080x1920 --impl fast
    JDNET_NATIVE=0 python benchmarks/bench_inference.py ...   # the fast path without its native kernels

Writes ``benchmarks/results/inference-<tag>.json`` and ``.md`` (``--tag``, default ``cpu``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import ROOT, machine_info, machine_text, parse_size, result_tag, write_results



def child(args: argparse.Namespace) -> None:
    """One measurement; prints one JSON line."""
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from jdnet_plugin.ops import native
    from jdnet_plugin.inference import derain_tensor
    from jdnet_plugin.registry import create_model
    from jdnet_plugin.utils.host_memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # what the derain CLI sets for its process
    torch.manual_seed(0)
    model = create_model(args.preset).eval().set_attention_impl(args.impl).to(args.device)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if dtype is not None:
        model.optimize_for_inference(dtype=dtype)
        model.set_attention_impl(args.impl)
    h, w = args.size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    # --max-pixels: the users' path (derain_tensor tiles frames above it); otherwise one whole-frame forward.
    limit = None if args.max_pixels == "auto" else int(args.max_pixels)
    run = (lambda t: derain_tensor(model, t, max_pixels=limit)) if limit != 0 else model
    with torch.inference_mode():
        model(x[..., :64, :64])
        sync()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            out = run(x)
            sync()
            times.append(time.perf_counter() - t)
    # The native kernels run in fp32 only: under autocast the fast path takes PyTorch's kernels.
    rec = {"seconds": min(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_mb": rss_before,
           "native_attention": args.impl == "fast" and native.available() and dtype is None}
    if args.device.startswith("cuda"):
        rec["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.save_output:
        torch.save(out.float().cpu(), args.save_output)
    print(json.dumps(rec))


def measure(preset: str, impl: str, size: tuple[int, int], threads: int, device: str, dtype: str,
            iters: int, save_output: str | None = None, wait_policy: str = "PASSIVE", max_pixels: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", "--preset", preset, "--impl", impl, "--size", f"{size[0]}x{size[1]}",
           "--threads", str(threads), "--device", device, "--dtype", dtype, "--iters", str(iters),
           "--max-pixels", str(max_pixels)]
    if save_output:
        cmd += ["--save-output", save_output]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="jdnet, jdnet-lite (repeatable; default both)")
    p.add_argument("--size", type=parse_size, action="append", help="HxW (repeatable; default 320x480)")
    p.add_argument("--impl", choices=("both", "fast", "reference"), default="both")
    p.add_argument("--repeats", type=int, default=3, help="subprocesses per impl and config (median)")
    p.add_argument("--iters", type=int, default=1, help="timed forwards per subprocess (best)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "default"), default="PASSIVE",
                   help="OpenMP idle threads sleep (PASSIVE, default: robust on a shared machine), spin (ACTIVE), "
                        "or the OpenMP runtime's own default (spin a while, then sleep), what users get")
    p.add_argument("--max-pixels", default="0",
                   help="time derain_tensor(max_pixels=N), which tiles larger frames; 'auto': its default for the "
                        "model; 0 (default): one whole-frame forward")
    p.add_argument("--tag", type=result_tag, default="cpu", help="results file name: inference-<tag>.json/.md")
    p.add_argument("--note", default="", help="free text stored with the results (machine load, ...)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.preset, args.size = args.preset[0], args.size[0]
        child(args)
        return 0

    import torch

    presets = args.preset or ["jdnet", "jdnet-lite"]
    sizes = args.size or [(320, 480)]
    impls = ["fast", "reference"] if args.impl == "both" else [args.impl]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    for preset in presets:
        for size in sizes:
            runs: dict[str, list[dict]] = {i: [] for i in impls}
            for r in range(args.repeats):
                for impl in (impls if r % 2 == 0 else impls[::-1]):
                    out = str(tmp / f"{impl}.pt") if r == 0 else None
                    rec = measure(preset, impl, size, args.threads, args.device, args.dtype, args.iters, out,
                                  args.omp_wait_policy, args.max_pixels)
                    runs[impl].append(rec)
                    print(f"{preset} {size[0]}x{size[1]} {impl}: {rec}", flush=True)
            row = {"preset": preset, "size": list(size), "threads": args.threads, "device": args.device,
                   "dtype": args.dtype, "repeats": args.repeats,
                   "max_pixels": None if args.max_pixels == "0" else args.max_pixels}
            for impl, recs in runs.items():
                ok = [x for x in recs if "error" not in x]
                if not ok:
                    row[impl] = {"error": recs[0]["error"]}
                    continue
                sec = statistics.median(x["seconds"] for x in ok)
                row[impl] = {"seconds_median": sec, "seconds_all": [x["seconds"] for x in ok],
                             "megapixels_per_s": size[0] * size[1] / 1e6 / sec,
                             "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
                             "rss_before_forward_mb": min(x["rss_before_mb"] for x in ok),
                             "native_attention": all(x.get("native_attention") for x in ok)}
                if "cuda_peak_mb" in ok[0]:
                    row[impl]["cuda_peak_mb"] = max(x["cuda_peak_mb"] for x in ok)
            if len(impls) == 2 and "seconds_median" in row.get("fast", {}) and "seconds_median" in row.get("reference", {}):
                row["speedup"] = row["reference"]["seconds_median"] / row["fast"]["seconds_median"]
                # per-repeat ratios: each pair ran back to back
                row["speedup_per_repeat"] = [r["seconds"] / f["seconds"] for f, r in zip(runs["fast"], runs["reference"])
                                             if "error" not in f and "error" not in r]
                a, b = torch.load(tmp / "fast.pt"), torch.load(tmp / "reference.pt")
                row["max_abs_diff_fast_vs_reference"] = (a - b).abs().max().item()
            rows.append(row)
            if "speedup" in row:
                print(f"==> {preset} {size[0]}x{size[1]}: fast {row['fast']['seconds_median']:.2f} s, reference "
                      f"{row['reference']['seconds_median']:.2f} s, speedup {row['speedup']:.1f}x, "
                      f"max |diff| {row['max_abs_diff_fast_vs_reference']:.2g}", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(),
              "omp_wait_policy": args.omp_wait_policy, "loadavg_at_end": os.getloadavg(), "torch": torch.__version__,
              "note": args.note, "rows": rows}
    write_results(f"inference-{args.tag}", result, to_markdown(result))
    print(to_markdown(result))
    return 0


def to_markdown(result: dict) -> str:
    lines = [f"# JDNet inference benchmark ({result['date']})", "",
             f"`{result['command']}`; torch {result['torch']}, {machine_text(result['machine'])}, "
             f"load average at the end {', '.join(f'{v:.1f}' for v in result['loadavg_at_end'])}. {result['note']}", "",
             "| preset | size | device | dtype | impl | seconds (median) | MP/s | peak RSS MB | speedup | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for impl in ("fast", "reference"):
            if impl not in row:
                continue
            r = row[impl]
            size = f"{row['size'][0]}x{row['size'][1]}" + (f", derain_tensor(max_pixels={row['max_pixels']})" if row.get("max_pixels") else "")
            if "error" in r:
                lines.append(f"| {row['preset']} | {size} | {row['device']} | {row['dtype']} | {impl} | error: {r['error']} | | | | |")
                continue
            first = impl == "fast"
            impl = impl + (" (native kernels)" if r.get("native_attention") else "")
            lines.append(f"| {row['preset']} | {size} | {row['device']} | {row['dtype']} | {impl} | {r['seconds_median']:.2f} | "
                         f"{r['megapixels_per_s']:.4f} | {r['peak_rss_mb']:.0f} | "
                         f"{row['speedup']:.1f}x | {row['max_abs_diff_fast_vs_reference']:.2g} |" if first and "speedup" in row
                         else f"| {row['preset']} | {size} | {row['device']} | {row['dtype']} | {impl} | {r['seconds_median']:.2f} | "
                              f"{r['megapixels_per_s']:.4f} | {r['peak_rss_mb']:.0f} | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
