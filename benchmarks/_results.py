"""Where benchmark results go: ``results/<name>.json`` (all numbers) and ``results/<name>.md`` (the table)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
sys.path.insert(0, str(ROOT))

from jdnet_plugin.utils.atomic import atomic_write_text  # noqa: E402


def write_results(name: str, result: dict, markdown: str) -> None:
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
