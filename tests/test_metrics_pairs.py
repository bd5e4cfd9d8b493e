"""jdnet_plugin.metrics.pairs: the one scorer of paired folders (paired and side-by-side layouts, bad pairs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from jdnet_plugin.data import DatasetError
from jdnet_plugin.io import write_rgb
from jdnet_plugin.metrics import PAIR_METRICS, image_scores, pair_files, paired_dataset, psnr, score_pairs


def _pair(seed: int, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    rain = np.clip(clean.astype(int) + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
    return rain, clean


def test_paired_and_side_by_side_folders_score_the_same(tmp_path):
    for i in range(2):
        rain, clean = _pair(i)
        write_rgb(tmp_path / "p" / "rain" / f"rain-{i}.png", rain)
        write_rgb(tmp_path / "p" / "norain" / f"norain-{i}.png", clean)
        write_rgb(tmp_path / "s" / f"{i}.png", np.concatenate([clean, rain], axis=1))  # clean | rainy
    paired, sbs = paired_dataset(tmp_path / "p"), paired_dataset(tmp_path / "s")
    assert pair_files(paired, 1) == (tmp_path / "p" / "rain" / "rain-1.png", tmp_path / "p" / "norain" / "norain-1.png")
    a, b = list(score_pairs(paired)), list(score_pairs(sbs))
    assert [s.name for s in a] == ["rain-0", "rain-1"] and len(b) == 2
    for x, y in zip(a, b):
        assert set(x.input) == set(PAIR_METRICS) and x.derained is None and x.output is None
        assert x.input == pytest.approx(y.input)
    rain, clean = _pair(0)
    assert a[0].input["psnr_y"] == pytest.approx(float(psnr(rain, clean, convention="y")))
    ident = list(score_pairs(paired, nn.Identity(), score_input=False))
    assert ident[0].input is None and ident[0].derained == pytest.approx(a[0].input, abs=1e-4)
    assert isinstance(ident[0].output, torch.Tensor) and ident[0].output.shape == (3, 24, 32)


def test_bad_pair_fails_alone_or_raises(tmp_path):
    rain, clean = _pair(0)
    write_rgb(tmp_path / "rain" / "rain-0.png", rain)
    write_rgb(tmp_path / "norain" / "norain-0.png", clean)
    write_rgb(tmp_path / "rain" / "rain-1.png", rain)
    write_rgb(tmp_path / "norain" / "norain-1.png", clean[:20])  # sizes differ
    ds = paired_dataset(tmp_path)
    scores = list(score_pairs(ds, keep_going=True))
    assert scores[0].error is None and "differ" in scores[1].error and scores[1].name == "rain-1"
    with pytest.raises(DatasetError, match="differ"):
        list(score_pairs(ds))
    assert len(list(score_pairs(ds, limit=1))) == 1


def test_folders_without_ground_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        paired_dataset(tmp_path / "nowhere")
    write_rgb(tmp_path / "u" / "a.png", _pair(0)[0])
    with pytest.raises(DatasetError, match="no clean ground truth"):
        paired_dataset(tmp_path / "u")
    assert image_scores(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))["ssim_rgb"] == pytest.approx(1.0)
