"""Several generalisation reports side by side: held-out and in-distribution rain kept apart, one table.

    python eval_tasks/compare.py mixed=runs/gen-mixed broad=runs/gen-broad --out benchmarks/results/rain-comparison \\
        [--pair BASE:OTHER ...] [--sheet] [--shared ../shared]

Each ``NAME=DIR`` is the output folder of ``eval_tasks/generalization.py`` (its ``report.json``). Writes
OUT/report.json and OUT/report.md; ``--sheet`` also draws OUT/real_rainy_sheet.jpg, the report's real
photos as rainy | one column per weights file, from the weights files the reports name. The paired
differences of the recovered fractions are every report minus the first, or the ``--pair`` ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jdnet_plugin.eval_tasks.bootstrap import paired_difference
from jdnet_plugin.eval_tasks.common import (
    EvalError, cli_entry, derain_fn, load_derainer, markdown_table, pick_device, write_report)
from jdnet_plugin.eval_tasks.generalization import REAL_PHOTOS, SHEET, real_rainy_sheet

__all__ = ["ROWS", "read_reports", "parse_pairs", "comparison", "render_markdown", "draw_sheet", "main"]

# (group, label, path into a generalisation report.json, digits shown)
ROWS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("held-out", "Rain100L test, PSNR-Y (dB)", ("held_out", "rain100L", "derained", "psnr_y"), 2),
    ("held-out", "Rain100L test, SSIM-Y", ("held_out", "rain100L", "derained", "ssim_y"), 4),
    ("held-out", "COCO128 + transplanted Rain100L rain: recovered fraction of mAP50-95",
     ("detection", "recovered_fraction"), 3),
    ("held-out", "COCO128 + transplanted Rain100L rain: derained mAP50-95", ("detection", "derained", "map50_95"), 4),
    ("held-out", "CamVid val + transplanted Rain100L rain: recovered fraction of mIoU",
     ("segmentation", "recovered_fraction"), 3),
    ("held-out", "CamVid val + transplanted Rain100L rain: derained mIoU", ("segmentation", "derained", "miou"), 4),
    ("in-distribution", "Kodak24 + own `light` rain, PSNR-Y (dB)", ("in_distribution", "light", "derained", "psnr_y"), 2),
    ("in-distribution", "Kodak24 + own `heavy` rain, PSNR-Y (dB)", ("in_distribution", "heavy", "derained", "psnr_y"), 2),
    ("clean images", "COCO128 clean -> clean derained, mAP50-95", ("detection", "clean_derained", "map50_95"), 4),
    ("clean images", "CamVid clean -> clean derained, mIoU", ("segmentation", "clean_derained", "miou"), 4),
)
# The same quantity without deraining, where the reports hold it (shown as the "input" column).
INPUT = {("held_out", "rain100L", "derained"): ("held_out", "rain100L", "input"),
         ("in_distribution", "light", "derained"): ("in_distribution", "light", "input"),
         ("in_distribution", "heavy", "derained"): ("in_distribution", "heavy", "input"),
         ("detection", "derained"): ("detection", "rainy"), ("segmentation", "derained"): ("segmentation", "rainy"),
         ("detection", "clean_derained"): ("detection", "clean"),
         ("segmentation", "clean_derained"): ("segmentation", "clean")}


def _get(report: dict, path: Sequence[str]) -> float | None:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, (int, float)) else None


def read_reports(specs: Sequence[str]) -> dict[str, dict]:
    """``{name: report}`` from ``NAME=DIR`` arguments."""
    reports = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise EvalError(f"{spec!r}: expected NAME=DIR (a generalization.py output folder)")
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise EvalError(f"{path}: no report.json (run eval_tasks/generalization.py --out {folder} first)")
        try:
            reports[name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}: not JSON ({e})") from None
        missing = {"weights", "weights_file", "weights_sha256", "quick"} - set(reports[name])
        if missing:
            raise EvalError(f"{path}: not a generalization.py report (no {', '.join(sorted(missing))})")
        if reports[name].get("quick"):
            print(f"warning: {path} is a --quick report (subsets)", file=sys.stderr)
    return reports


def _rounded(v: float | None) -> float | None:
    """A value to 6 significant digits: the same input measured in float32 or float64 counts as one."""
    return None if v is None else float(f"{v:.6g}")


def parse_pairs(specs: Sequence[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """``BASE:OTHER`` arguments as ``(base, other)`` report names; none: every report against the first."""
    if not specs:
        return [(names[0], n) for n in names[1:]]
    pairs = []
    for spec in specs:
        base, sep, other = spec.partition(":")
        if not sep or base not in names or other not in names or base == other:
            raise EvalError(f"--pair {spec!r}: expected BASE:OTHER, two different names of {', '.join(names)}")
        if (base, other) in pairs:
            raise EvalError(f"--pair {spec!r} given twice")
        pairs.append((base, other))
    return pairs


def _paired(reports: dict[str, dict], section: str, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """``other``'s recovered fraction in ``section`` minus ``base``'s for each pair: the paired bootstrap interval
    (:func:`jdnet_plugin.eval_tasks.bootstrap.paired_difference`; ``ci95`` None where the two reports do not
    hold draws over the same images). Pairs where neither report measured ``section`` are left out."""
    out = []
    for base, other in pairs:
        a, b = reports[base].get(section, {}), reports[other].get(section, {})
        if a.get("recovered_fraction") is None and b.get("recovered_fraction") is None:
            continue
        metric = b.get("headline_metric")
        both = "bootstrap" in a and "bootstrap" in b and metric
        d = paired_difference(a["bootstrap"], b["bootstrap"], metric) if both else None
        out.append({"base": base, "other": other, "ci95": None, "p_b_better": None, "difference": None,
                    "same_images": d is not None} | (d or {}))
        if d is not None and None not in (a.get("recovered_fraction"), b.get("recovered_fraction")):
            out[-1]["difference"] = b["recovered_fraction"] - a["recovered_fraction"]
    return out


def comparison(reports: dict[str, dict], pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Rows of :data:`ROWS`: ``{group, label, input, values {name: value}, ci {name: [lo, hi]}}``, and the paired
    differences of the recovered fractions, ``other`` minus ``base`` for each pair (default: each report minus
    the first)."""
    pairs = parse_pairs([], list(reports)) if pairs is None else pairs
    rows = []
    for group, label, path, digits in ROWS:
        in_path = next((INPUT[k] + path[len(k):] for k in INPUT if tuple(path[:len(k)]) == k), None)
        inputs = [_get(r, in_path) for r in reports.values()] if in_path else []
        ci = {n: r.get(path[0], {}).get("recovered_fraction_ci95") for n, r in reports.items()} \
            if path[-1] == "recovered_fraction" else {}
        rows.append({"group": group, "label": label, "digits": digits,
                     "input": inputs[0] if inputs and len({_rounded(v) for v in inputs}) == 1 else None,
                     "values": {n: _get(r, path) for n, r in reports.items()}, "ci": ci})
    return {"reports": {n: {"weights": r["weights"], "weights_sha256": r["weights_sha256"], "quick": r["quick"]}
                        for n, r in reports.items()}, "rows": rows,
            "paired": {s: _paired(reports, s, pairs) for s in ("detection", "segmentation")}}


def render_markdown(c: dict[str, Any]) -> str:
    names = list(c["reports"])

    def f(v: float | None, d: int) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    def cell(r: dict, n: str) -> str:
        ci = r.get("ci", {}).get(n)
        return f(r["values"][n], r["digits"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    table = [[r["group"], r["label"], f(r["input"], r["digits"]), *(cell(r, n) for n in names)] for r in c["rows"]]
    md = ["# Generalisation reports compared", "", markdown_table(["rain", "figure", "no deraining", *names], table),
          "", "input column: the rainy input (restoration) or the rainy copy / clean copy (downstream); "
          "recovered fraction = (derained - rainy) / (clean - rainy), [95 % bootstrap interval over images].", ""]
    for section, diffs in c.get("paired", {}).items():
        for d in diffs:
            b, n = d["base"], d["other"]
            if d["ci95"]:
                md.append(f"- {section}, recovered fraction, `{n}` minus `{b}`: {d['difference']:+.3f} "
                          f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (paired bootstrap over the same images; "
                          f"`{n}` higher in {100 * d['p_b_better']:.0f} % of draws)")
            elif d["same_images"]:
                md.append(f"- {section}: `{n}` against `{b}`: rain cost nothing in most draws; no paired interval")
            else:
                md.append(f"- {section}: `{n}` and `{b}` hold no bootstrap draws over the same images; no paired "
                          "interval")
    md.append("")
    md += [f"- `{n}`: weights `{r['weights']}` (sha256 {r['weights_sha256'][:12]})" + (" QUICK" if r["quick"] else "")
           for n, r in c["reports"].items()]
    return "\n".join(md)


def draw_sheet(reports: dict[str, dict], shared: Path, out: Path, device: str | None = None) -> list[str]:
    """The real photos as rainy | one column per report's weights; the names drawn."""
    dev = pick_device(device)
    derains = {}
    for n, r in reports.items():
        model, sha = load_derainer(Path(r["weights_file"]), dev)
        if sha != r["weights_sha256"]:
            raise EvalError(f"{r['weights_file']} changed since report {n!r} was made (sha256 {sha[:12]}, the "
                            f"report's {r['weights_sha256'][:12]}): rerun its report")
        derains[n] = derain_fn(model, None)
    return real_rainy_sheet(shared / "data" / "real_rainy", REAL_PHOTOS, derains, out / SHEET)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", metavar="NAME=DIR", help="generalization.py output folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pair", action="append", default=[], metavar="BASE:OTHER",
                   help="paired difference OTHER minus BASE of the recovered fractions (repeatable; "
                        "default: every report minus the first)")
    p.add_argument("--sheet", action="store_true", help="draw the real photos with every weights file")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    p.add_argument("--device")
    return p


def _run(args: argparse.Namespace) -> int:
    reports = read_reports(args.reports)
    c = comparison(reports, parse_pairs(args.pair, list(reports)))
    if args.sheet:
        c["sheet"] = {"file": SHEET, "photos": draw_sheet(reports, args.shared, args.out, args.device)}
    md = render_markdown(c) + (f"\n\n![rainy | {' | '.join(reports)}]({SHEET})\n" if args.sheet else "\n")
    write_report(args.out, c, md)
    print(md)
    return 0


main = cli_entry(_run, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
