"""eval_tasks/restore.py: the PSNR/SSIM table over datasets x weights, input baseline, cache, errors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from jdnet_plugin.eval_tasks.restore import COLUMNS, main
from jdnet_plugin import create_model, save_checkpoint
from jdnet_plugin.io import read_rgb
from jdnet_plugin.metrics import psnr, ssim
from jdnet_plugin.rain import add_rain


def make_pairs(root: Path, n: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "rain").mkdir(parents=True)
    (root / "norain").mkdir(parents=True)
    for i in range(n):
        clean = cv2.GaussianBlur((rng.random((48, 64, 3)) * 255).astype(np.uint8), (5, 5), 0)
        rainy = add_rain(clean, "heavy", seed=i)
        assert not np.array_equal(rainy, clean)
        cv2.imwrite(str(root / "norain" / f"norain-{i:03d}.png"), clean[..., ::-1])
        cv2.imwrite(str(root / "rain" / f"rain-{i:03d}.png"), rainy[..., ::-1])
    return root


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("w")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(d / f"w{seed}.pt", create_model("jdnet-lite", units=1, scales=1)))
    return paths


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_table_input_baseline_and_cache(tmp_path, two_weights, capsys):
    a, b = make_pairs(tmp_path / "setA"), make_pairs(tmp_path / "setB", n=1, seed=5)
    out = tmp_path / "out"
    argv = ["--data", a, b, "--weights", *two_weights, "--out", out]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert "| setA | input |" in stdout and "PSNR-Y" in stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["datasets"]) == {"setA", "setB"} and report["images"] == {"setA": 2, "setB": 1}
    for name in ("setA", "setB"):
        assert list(report["datasets"][name]) == ["input", "w0", "w1"]
        for row in report["datasets"][name].values():
            assert set(row) == set(COLUMNS)
    # The input row is the rainy image measured against the clean one.
    expected = {c: [] for c in COLUMNS}
    for i in range(2):
        r = torch.from_numpy(read_rgb(a / "rain" / f"rain-{i:03d}.png")).permute(2, 0, 1)
        c = torch.from_numpy(read_rgb(a / "norain" / f"norain-{i:03d}.png")).permute(2, 0, 1)
        for conv in ("y", "rgb"):
            expected[f"psnr_{conv}"].append(float(psnr(r, c, convention=conv)))
            expected[f"ssim_{conv}"].append(float(ssim(r, c, convention=conv)))
    for col, vals in expected.items():
        assert report["datasets"]["setA"]["input"][col] == pytest.approx(np.mean(vals), rel=1e-5)
    # Different random weights give different numbers.
    assert report["datasets"]["setA"]["w0"]["psnr_y"] != report["datasets"]["setA"]["w1"]["psnr_y"]
    assert (out / "plot.png").is_file() and "| setB | w1 |" in (out / "report.md").read_text()

    cached = sorted((out / "cache").glob("*.json"))
    assert len(cached) == 6  # (input + 2 weights) x 2 datasets
    mtimes = [p.stat().st_mtime_ns for p in cached]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert json.loads((out / "report.json").read_text())["datasets"] == report["datasets"]


def test_errors(tmp_path, two_weights, capsys):
    a = make_pairs(tmp_path / "setA", n=1)
    rc, _, err = run(["--data", a, "--weights", tmp_path / "missing.pt", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and err.startswith("error:") and "missing.pt" in err
    rc, _, err = run(["--data", tmp_path / "nowhere", "--weights", two_weights[0], "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "nowhere" in err
    only_rain = tmp_path / "only_rain"
    only_rain.mkdir()
    cv2.imwrite(str(only_rain / "x.png"), np.zeros((16, 16, 3), np.uint8))
    rc, _, err = run(["--data", only_rain, "--weights", two_weights[0], "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "error:" in err
