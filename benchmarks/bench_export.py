"""Export the paper-size JDNet (random weights) to TorchScript and ONNX, verify both against the eager
model on one image of the benchmark size, and time one forward of each runtime.

    python benchmarks/bench_export.py --size 320x480

Writes ``benchmarks/results/export-<tag>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _results import ROOT, result_tag, write_results



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="jdnet")
    p.add_argument("--size", default="320x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", type=result_tag, default="cpu")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    # As in bench_inference: idle OpenMP threads sleep (robust on a shared machine); set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT))
    from jdnet_plugin.exporting import export_onnx, export_torchscript
    from jdnet_plugin.registry import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset).eval()
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode():
            model(x[..., :64, :64])  # warm-up
            t = time.perf_counter()
            ref = model(x)
            eager_s = time.perf_counter() - t
        rows.append({"runtime": "eager (fast path)", "seconds": eager_s, "max_abs_diff": 0.0})
        for fmt in ("torchscript", "onnx"):
            path = Path(tmp) / f"m.{'pt' if fmt == 'torchscript' else 'onnx'}"
            t = time.perf_counter()
            # verified on the benchmark image size (batch 1)
            res = (export_torchscript(model, path, example_size=(64, 64), check_sizes=[(h, w)]) if fmt == "torchscript"
                   else export_onnx(model, path, example_size=(64, 64), check_sizes=[(h, w)]))
            export_s = time.perf_counter() - t
            if fmt == "torchscript":
                loaded = torch.jit.load(str(path))
                with torch.no_grad():
                    t = time.perf_counter()
                    out = loaded(x)
                    run_s = time.perf_counter() - t
            else:
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                t = time.perf_counter()
                out = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
                run_s = time.perf_counter() - t
            rows.append({"runtime": fmt, "seconds": run_s, "export_and_verify_seconds": export_s,
                         "max_abs_diff": (out - ref).abs().max().item(),
                         "verified_max_abs_diff": res.max_abs_diff, "file_mb": path.stat().st_size / 2**20})
            print(rows[-1], flush=True)
    result = {"command": " ".join(["bench_export.py"] + (argv if argv is not None else sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "preset": args.preset, "size": [h, w],
              "threads": args.threads, "loadavg_at_end": os.getloadavg(), "torch": torch.__version__,
              "onnxruntime": ort.__version__, "note": args.note, "rows": rows}
    lines = [f"# JDNet export check ({result['date']})", "",
             f"`{result['command']}`: preset {args.preset}, random weights, one {h}x{w} image, {args.threads} threads; "
             f"torch {torch.__version__}, onnxruntime {ort.__version__}; load average at the end "
             f"{', '.join(f'{v:.1f}' for v in result['loadavg_at_end'])}. {args.note}", "",
             "| runtime | seconds (one forward) | max abs diff vs eager |", "|---|---|---|"]
    lines += [f"| {r['runtime']} | {r['seconds']:.2f} | {r['max_abs_diff']:.2g} |" for r in rows]
    write_results(f"export-{args.tag}", result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
