import csv
import json

import numpy as np
import pytest
import torch

from jdnet_plugin import create_model, save_checkpoint
from jdnet_plugin.cli.evaluate import main
from jdnet_plugin.io import read_rgb, write_rgb
from jdnet_plugin.metrics import psnr


def _pair(seed, h=32, w=40):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    clean = np.clip((np.sin(xx / 5.0 + seed)[..., None] * 0.3 + 0.5 + rng.normal(0, 0.03, (h, w, 3))) * 255, 0, 255)
    streaks = (rng.random((h, w)) < 0.05)[..., None] * 60
    return clean.astype(np.uint8), np.clip(clean + streaks, 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "Rain100L"
    for i in range(1, 4):
        clean, rain = _pair(i)
        write_rgb(root / "norain" / f"norain-{i:03d}.png", clean)
        write_rgb(root / "rain" / f"rain-{i:03d}.png", rain)
    return root


def _identity_weights(path):
    """A JDNet whose rain layer is 0: its output equals its input."""
    model = create_model("jdnet-lite", units=1, scales=1)
    with torch.no_grad():
        model.exitBlock[0].weight.zero_()
        model.exitBlock[0].bias.zero_()
    return save_checkpoint(path, model)


def test_identity_model_scores_like_the_input(dataset, tmp_path, capsys):
    weights = _identity_weights(tmp_path / "id.pt")
    out_json, out_csv, saved = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "saved"
    rc = main(["--data", str(dataset), "--weights", str(weights), "--json", str(out_json), "--csv", str(out_csv),
               "--save-images", str(saved), "--device", "cpu"])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["pairs"] == 3 and len(doc["images"]) == 3 and doc["self_ensemble"] == "off"
    expected = np.mean([float(psnr(read_rgb(dataset / "rain" / f"rain-{i:03d}.png"),
                                   read_rgb(dataset / "norain" / f"norain-{i:03d}.png"))) for i in range(1, 4)])
    assert doc["mean"]["input"]["psnr_y"] == pytest.approx(expected, abs=1e-6)
    for m in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert doc["mean"]["derained"][m] == pytest.approx(doc["mean"]["input"][m], abs=1e-4)
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["rain-001.png", "rain-002.png", "rain-003.png"]
    assert float(rows[0]["input_psnr_y"]) == pytest.approx(doc["images"][0]["input"]["psnr_y"])
    np.testing.assert_array_equal(read_rgb(saved / "rain-002.png"), read_rgb(dataset / "rain" / "rain-002.png"))
    printed = capsys.readouterr().out
    assert "PSNR-Y" in printed and f"{expected:.2f}" in printed


def test_random_model_and_tiles(dataset, tmp_path):
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "w.pt", create_model("jdnet-lite", units=1, scales=1))
    out_json = tmp_path / "r.json"
    assert main(["--data", str(dataset), "--weights", str(weights), "--json", str(out_json), "--tile", "24",
                 "--overlap", "8"]) == 0
    doc = json.loads(out_json.read_text())
    img = doc["images"][0]
    assert img["derained"]["psnr_y"] != pytest.approx(img["input"]["psnr_y"], abs=1e-3)
    assert 0 < img["derained"]["ssim_rgb"] <= 1


def test_bad_pairs_and_bad_arguments(dataset, tmp_path, capsys):
    weights = _identity_weights(tmp_path / "id.pt")
    write_rgb(dataset / "norain" / "norain-004.png", np.zeros((16, 16, 3), np.uint8))
    write_rgb(dataset / "rain" / "rain-004.png", np.zeros((20, 16, 3), np.uint8))
    assert main(["--data", str(dataset), "--weights", str(weights)]) == 1
    assert "rain-004.png" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--weights", str(weights)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["--data", str(dataset), "--weights", str(weights), "--save-images", str(dataset / "rain")]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_missing_default_weights_says_pass_weights(dataset, capsys, monkeypatch):
    from jdnet_plugin import registry

    monkeypatch.setattr(registry, "_WEIGHTS", {})  # as in an install without shipped weights
    assert main(["--data", str(dataset)]) == 2
    assert "--weights" in capsys.readouterr().err

