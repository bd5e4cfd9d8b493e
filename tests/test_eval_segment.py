"""eval_tasks/segment.py: mIoU from one confusion matrix, class maps, model loaders, caching and error paths,
on a tiny dataset whose TorchScript segmenter classifies pixels by brightness (so rain changes its answers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from jdnet_plugin.eval_tasks.common import rain_fn
from jdnet_plugin.eval_tasks.segment import (Segmenter, confusion_matrix, iou_from_confusion, load_segmenter, main,
                                             read_class_map)

IGNORE = 9
CENTERS = (0.15, 0.5, 0.85)


class BrightnessSeg(nn.Module):
    """Class k where the pixel's mean brightness is nearest ``centers[k]``; extra channels never win."""

    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.tensor(list(CENTERS) + [10.0] * extra).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.mean(1, keepdim=True) - self.centers) ** 2) * 50


FACTORY_SRC = f"""
import torch
from torch import nn

class BrightnessSeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("centers", torch.tensor({list(CENTERS)}).view(1, -1, 1, 1))

    def forward(self, x):
        return -((x.mean(1, keepdim=True) - self.centers) ** 2) * 50

def make():
    return BrightnessSeg()
"""


def scripted(path: Path, extra: int = 0) -> Path:
    torch.jit.script(BrightnessSeg(extra)).save(str(path))
    return path


def make_dataset(root: Path, n: int = 3) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((24, 36), np.uint8)
        mask[:, 12:24], mask[:, 24:] = 1, 2
        mask[:2] = IGNORE  # a void band
        level = np.array(CENTERS)[np.minimum(mask, 2)] + rng.normal(0, 0.03, mask.shape)
        img = np.clip(level * 255, 0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"im{i}.png"), np.repeat(img[..., None], 3, 2))
        cv2.imwrite(str(masks / f"im{i}.png"), mask)
    return images, masks


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_confusion_and_iou():
    target = torch.tensor([0, 0, 1, 1, 2, 5, 5])
    preds = torch.tensor([0, 1, 1, 1, 7, 0, 2])  # 7: outside the classes (e.g. mapped to void) -> a miss
    cm = confusion_matrix(preds, target, num_classes=3, ignore_index=5)
    assert cm.shape == (3, 4) and cm.sum() == 5  # ignored pixels left out
    iou, present = iou_from_confusion(cm)
    assert iou.tolist() == pytest.approx([1 / 2, 2 / 3, 0.0])
    assert present.tolist() == [True, True, True]
    cm2 = confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 0]), 3, None)
    iou2, present2 = iou_from_confusion(cm2)
    assert present2.tolist() == [True, False, False] and iou2[0] == pytest.approx(0.5)


def test_report_cache_and_values(tmp_path, weights, capsys):
    images, masks = make_dataset(tmp_path / "ds")
    model = scripted(tmp_path / "seg.torchscript")
    out = tmp_path / "out"
    argv = ["--images", images, "--masks", masks, "--model", model, "--num-classes", 3, "--ignore-index", IGNORE,
            "--rain", "heavy", "--weights", weights, "--out", out, "--seed", 1, "--derain-clean"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert "| clean |" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["clean"]["miou"] == pytest.approx(1.0)
    assert report["rainy"]["miou"] < 0.9  # heavy rain brightens pixels into the next class
    assert set(report["clean_derained"]) == {"miou", "pixel_accuracy"}
    assert report["clean_cost"]["miou"] == pytest.approx(report["clean"]["miou"] - report["clean_derained"]["miou"])
    for copy in ("clean", "rainy", "derained", "clean_derained"):
        cm = np.array(report["confusion"][copy], dtype=np.float64)
        assert cm.sum() == 3 * 22 * 36  # every non-void pixel once
        tp = np.diag(cm[:, :3])
        iou = tp / (cm.sum(1) + cm[:, :3].sum(0) - tp)
        assert report[copy]["miou"] == pytest.approx(iou.mean())
    c, r, d = (report[k]["miou"] for k in ("clean", "rainy", "derained"))
    assert report["recovered_fraction"]["miou"] == pytest.approx((d - r) / (c - r))
    boot = report["bootstrap"]  # over the three images: every draw of the clean copy is perfect
    assert boot["intervals"]["miou"]["clean"] == pytest.approx([1.0, 1.0])
    lo, hi = boot["intervals"]["miou"]["rainy"]
    assert lo < hi and lo <= r <= hi
    assert len(boot["recovered_fraction"]["miou"]["replicates"]) == boot["replicates"]
    lo, hi = boot["intervals"]["miou"]["clean_cost"]  # the same sign as the report's clean cost
    assert lo <= report["clean_cost"]["miou"] <= hi and hi > 0
    assert "95 % intervals over images" in (out / "report.md").read_text()
    assert (out / "plot.png").is_file() and "miou" in (out / "report.md").read_text()
    rainy_file = Path(report["copies"]["rainy"]) / "im0.png"
    mtime = rainy_file.stat().st_mtime_ns

    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    again = json.loads((out / "report.json").read_text())
    assert again["copies_reused"] == {"rainy": True, "derained": True, "clean_derained": True}
    assert rainy_file.stat().st_mtime_ns == mtime
    assert {k: again[k] for k in ("clean", "rainy", "derained")} == {k: report[k] for k in ("clean", "rainy",
                                                                                                "derained")}
    assert again["bootstrap"] == report["bootstrap"]  # per-image matrices cached with the metrics
    rc, _, err = run([*argv, "--bootstrap", "0"], capsys)  # no intervals asked: none
    assert rc == 0, err
    assert json.loads((out / "report.json").read_text())["bootstrap"] is None
    rc, _, err = run([*argv, "--bootstrap", "-2"], capsys)
    assert rc != 0 and "bootstrap draws must be >= 0" in err
    # The source folders are untouched.
    assert sorted(p.name for p in images.iterdir()) == ["im0.png", "im1.png", "im2.png"]


def test_class_map_and_factory(tmp_path, weights, capsys, monkeypatch):
    images, masks = make_dataset(tmp_path / "ds", n=1)
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"lut": [0, 1, 2, IGNORE], "target_classes": ["dark", "mid", "bright"]}))
    base = ["--images", images, "--masks", masks, "--num-classes", 3, "--ignore-index", IGNORE, "--rain", "light",
            "--weights", weights, "--cache", tmp_path / "cache"]
    rc, _, err = run([*base, "--model", scripted(tmp_path / "s4.torchscript", extra=1), "--class-map", cmap,
                      "--out", tmp_path / "o1"], capsys)
    assert rc == 0, err
    mapped = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert set(mapped["per_class"]["clean"]) == {"dark", "mid", "bright"}

    (tmp_path / "tinyseg_factory.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, _, err = run([*base, "--model", "tinyseg_factory:make", "--out", tmp_path / "o2"], capsys)
    assert rc == 0, err
    plain = json.loads((tmp_path / "o2" / "report.json").read_text())
    for copy in ("clean", "rainy", "derained"):
        assert plain[copy]["miou"] == pytest.approx(mapped[copy]["miou"])


def test_smp_checkpoint_folder(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from jdnet_plugin.integrations import create_smp_model

    model = create_smp_model("Unet", "resnet18", classes=3, encoder_depth=3, decoder_channels=(16, 8, 4))
    model.save_pretrained(str(tmp_path / "unet"))
    loaded = load_segmenter(str(tmp_path / "unet"))
    out = Segmenter(loaded)(torch.rand(1, 3, 20, 30))
    assert out.shape == (1, 3, 20, 30)  # padded to the encoder's multiple and cropped back


def test_errors(tmp_path, weights, capsys):
    images, masks = make_dataset(tmp_path / "ds", n=1)
    model = scripted(tmp_path / "seg.torchscript")
    base = ["--images", images, "--masks", masks, "--model", model, "--num-classes", 3, "--ignore-index", IGNORE,
            "--rain", "light", "--weights", weights, "--out", tmp_path / "o"]

    def err_of(argv):
        rc, _, err = run(argv, capsys)
        assert rc == 2 and err.startswith("error:"), err
        return err

    assert "missing.torchscript" in err_of([*base[:4], "--model", tmp_path / "missing.torchscript", *base[6:]])
    assert "class-count mismatch" in err_of([*base[:6], "--num-classes", 4, *base[8:]])
    bad_len = tmp_path / "bad_len.json"
    bad_len.write_text(json.dumps({"lut": [0, 1]}))
    assert "class-count mismatch" in err_of([*base, "--class-map", bad_len])
    bad_val = tmp_path / "bad_val.json"
    bad_val.write_text(json.dumps({"lut": [0, 1, 5]}))
    assert "[5]" in err_of([*base, "--class-map", bad_val])
    other = tmp_path / "other_masks"
    other.mkdir()
    cv2.imwrite(str(other / "unrelated.png"), np.zeros((4, 4), np.uint8))
    assert "no labels" in err_of([*base[:2], "--masks", other, *base[4:]])
    cv2.imwrite(str(masks / "im0.png"), np.full((24, 36), 7, np.uint8))
    assert "class 7" in err_of(base)
    with pytest.raises(FileNotFoundError):
        read_class_map(tmp_path / "none.json")


def test_shared_espnet_camvid(tmp_path, shared_dir, weights, capsys):
    src = shared_dir / "data" / "camvid_val"
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    name = sorted((src / "images").iterdir())[0].name
    shutil.copy(src / "images" / name, images)
    shutil.copy(src / "masks" / name, masks)
    rc, _, err = run(["--images", images, "--masks", masks, "--model",
                      shared_dir / "models" / "espnet-cityscapes.torchscript", "--num-classes", 11, "--class-map",
                      shared_dir / "models" / "cityscapes_to_camvid.json", "--ignore-index", 11, "--rain", "light",
                      "--weights", weights, "--out", tmp_path / "out"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["clean"]["miou"] > 0.15
    assert "Road" in report["per_class"]["clean"]


def make_benchmark(root: Path, value: int = 120) -> Path:
    """A rain/ + norain/ pair folder whose rain layer is vertical streaks of ``value``."""
    (root / "rain").mkdir(parents=True)
    (root / "norain").mkdir(parents=True)
    clean = np.full((20, 30, 3), 60, np.uint8)
    rainy = clean.copy()
    rainy[:, ::4] += value
    cv2.imwrite(str(root / "norain" / "norain-001.png"), clean)
    cv2.imwrite(str(root / "rain" / "rain-001.png"), rainy)
    return root


def test_transplanted_rain(tmp_path, weights, capsys):
    images, masks = make_dataset(tmp_path / "ds", n=2)
    model = scripted(tmp_path / "seg.torchscript")
    spec = f"transplant:{make_benchmark(tmp_path / 'a' / 'bench')}"
    base = ["--images", images, "--masks", masks, "--model", model, "--num-classes", 3, "--ignore-index", IGNORE,
            "--weights", weights, "--seed", 1, "--cache", tmp_path / "cache"]
    rc, _, err = run([*base, "--rain", spec, "--out", tmp_path / "o1", "--max-images", 1], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert report["config"]["rain"] == spec and report["config"]["count"] == 1
    assert report["rainy"]["miou"] < report["clean"]["miou"]  # the streaks brighten pixels into the next class
    rainy = Path(report["copies"]["rainy"])
    assert rainy.name.startswith("images-rainy-transplant-bench-s1-") and sorted(p.name for p in rainy.glob("*.png")) \
        == ["im0.png"]
    clean = cv2.imread(str(images / "im0.png"))[..., ::-1]
    expected = rain_fn(spec, 1)(np.ascontiguousarray(clean), "im0.png")
    assert np.array_equal(cv2.imread(str(rainy / "im0.png"))[..., ::-1], expected)
    # Another benchmark folder of the same name is another rain: its own copy, not the cached one.
    other = f"transplant:{make_benchmark(tmp_path / 'b' / 'bench', value=90)}"
    rc, _, err = run([*base, "--rain", other, "--out", tmp_path / "o2", "--max-images", 1], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["copies"]["rainy"] != str(rainy)
    rc, _, err = run([*base, "--rain", f"transplant:{tmp_path / 'nobench'}", "--out", tmp_path / "o3"], capsys)
    assert rc == 2 and "nobench" in err
    rc, _, err = run([*base, "--rain", spec, "--out", tmp_path / "o4", "--max-images", -1], capsys)
    assert rc == 2 and "image limit must be positive" in err  # not the last image silently dropped


def test_gate_copies(tmp_path, weights, capsys):
    """--gate adds derained_gated / clean_derained_gated: at 0 every image is derained (as the ungated copies),
    at a threshold above every score none is (as rainy / clean), and the report says how many."""
    images, masks = make_dataset(tmp_path / "ds")
    model = scripted(tmp_path / "seg.torchscript")
    base = ["--images", images, "--masks", masks, "--model", model, "--num-classes", 3, "--ignore-index", IGNORE,
            "--rain", "heavy", "--weights", weights, "--seed", 1, "--derain-clean", "--cache", tmp_path / "cache"]
    reports = {}
    for gate in ("0", "1e9"):
        rc, _, err = run([*base, "--out", tmp_path / f"out{gate}", "--gate", gate], capsys)
        assert rc == 0, err
        reports[gate] = json.loads((tmp_path / f"out{gate}" / "report.json").read_text())
    opened, closed = reports["0"], reports["1e9"]
    assert opened["derained_gated"] == opened["derained"] and opened["clean_derained_gated"] == opened["clean_derained"]
    assert opened["gate"]["derained_gated"] == {"threshold": 0.0, "derained": 3, "passed": 0}
    assert closed["derained_gated"] == closed["rainy"] and closed["clean_derained_gated"] == closed["clean"]
    assert closed["gate"]["clean_derained_gated"] == {"threshold": 1e9, "derained": 0, "passed": 3}
    assert closed["recovered_fraction_gated"]["miou"] == pytest.approx(0.0)
    assert closed["clean_cost_gated"]["miou"] == pytest.approx(0.0)
    assert "rain gate (threshold 1e+09) in derained_gated: 0 images derained, 3 passed through" in \
        (tmp_path / "out1e9" / "report.md").read_text()
    rc, _, err = run([*base, "--out", tmp_path / "bad", "--gate", "sometimes"], capsys)
    assert rc == 2 and "--gate" in err


def test_relative_paths(tmp_path, weights, capsys, monkeypatch):
    """The README's command passes relative folders (../shared/...)."""
    make_dataset(tmp_path / "ds", n=1)
    scripted(tmp_path / "seg.torchscript")
    monkeypatch.chdir(tmp_path / "ds")
    rc, _, err = run(["--images", "images", "--masks", "../ds/masks", "--model", "../seg.torchscript",
                      "--num-classes", 3, "--ignore-index", IGNORE, "--rain", "light", "--weights", weights,
                      "--out", "out"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "ds" / "out" / "report.json").read_text())["clean"]["miou"] == pytest.approx(1.0)
