"""Where benchmark results go: ``results/<name>.json`` (all numbers) and ``results/<name>.md`` (the table)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
SHARED = ROOT.parent / "shared"  # data and downstream models, beside the repository
sys.path.insert(0, str(ROOT))

from jdnet_plugin.utils.atomic import atomic_write_text  # noqa: E402


def result_tag(text: str) -> str:
    """A ``--tag`` argument: part of a file name in ``results/`` (letters, digits, ``.``, ``_``, ``-``), not a path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a results file tag (letters, digits, '.', '_', '-'; "
                                         "the results go to benchmarks/results/)")
    return text


def write_results(name: str, result: dict, markdown: str) -> None:
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")


def machine_info() -> dict:
    """The CPU the numbers came from (the development VMs differ: AVX2 on some, AVX-512 on others)."""
    import torch

    from jdnet_plugin.utils.machine import cpu_model

    return {"cpu": cpu_model(), "simd": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count()}


def machine_text(info: dict) -> str:
    """``machine_info()`` in one phrase for a results table's header."""
    return f"{info['cpu']} ({info['simd']}), {info['cpu_count']} CPUs"


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (a ``--size`` argument) as ``(H, W)``."""
    h, w = text.lower().split("x")
    return int(h), int(w)
