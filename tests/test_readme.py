"""The README's Python examples run as written (in order, one namespace, as a reader pastes them)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    pytest.importorskip("segmentation_models_pytorch")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    work = tmp_path / "repo"  # the examples run from the repository root; ../shared beside it
    work.mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(work)
    assert len(BLOCKS) >= 4
    namespace: dict = {}
    ran = 0
    for i, code in enumerate(BLOCKS):
        if "../shared" in code and not SHARED.is_dir():
            continue
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        ran += 1
    assert ran >= len(BLOCKS) - 1 and os.path.isfile(work / "my.pt")
