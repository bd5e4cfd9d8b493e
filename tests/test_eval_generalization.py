"""Transplanted rain (eval_tasks.common) and eval_tasks/generalization.py: the benchmark's rain layer on other
images, and the --quick report on a tiny copy of the ../shared layout made here."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from jdnet_plugin.eval_tasks.common import EvalError, rain_fn, rain_id, rain_label, rain_layers, transplant_layer
from jdnet_plugin.eval_tasks.compare import main as compare_main
from jdnet_plugin.eval_tasks.generalization import REAL_PHOTOS, SHEET, main
from jdnet_plugin.rain import PRESETS

CENTERS = (0.15, 0.5, 0.85)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def make_benchmark(root: Path, layers: list[np.ndarray], seed: int = 0, dip: bool = False) -> Path:
    """A Rain100L-like folder (rain/ + norain/) whose pairs differ by exactly ``layers`` (clean kept <= 120);
    ``dip``: the first pixel of each rainy image is a little darker than the clean one instead."""
    rng = np.random.default_rng(seed)
    for i, layer in enumerate(layers):
        clean = rng.integers(0, 121, layer.shape, dtype=np.uint8)
        rainy = (clean.astype(np.int16) + layer).astype(np.uint8)
        if dip:  # Rain100L's rainy images are at most 3 levels below the clean ones
            rainy[0, 0] = np.maximum(clean[0, 0].astype(np.int16) - 3, 0)
        write_rgb(root / "norain" / f"norain-{i + 1:03d}.png", clean)
        write_rgb(root / "rain" / f"rain-{i + 1:03d}.png", rainy)
    return root


def streaks(h: int, w: int, seed: int, value: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    layer = np.zeros((h, w, 3), np.uint8)
    for x in rng.choice(w, size=max(1, w // 4), replace=False):
        layer[:, x] = value
    return layer


def window_of(diff: np.ndarray, layer: np.ndarray) -> bool:
    """Is ``diff`` some window of ``layer``?"""
    h, w = diff.shape[:2]
    return any(np.array_equal(layer[y:y + h, x:x + w], diff)
               for y in range(layer.shape[0] - h + 1) for x in range(layer.shape[1] - w + 1))


# ----------------------------------------------------------------------------------------------- transplanted rain
def test_rain_layers_are_clipped_differences(tmp_path):
    ramp = np.tile(np.arange(0, 120, 2, dtype=np.uint8)[None, :, None], (20, 1, 3))  # 20 x 60
    bench = make_benchmark(tmp_path / "bench", [ramp, streaks(20, 60, 1)], dip=True)
    layers = rain_layers(bench)
    assert len(layers) == 2 and layers[0].dtype == np.uint8
    expected = ramp.copy()
    expected[0, 0] = 0  # rainy below clean is clipped to no rain
    assert np.array_equal(layers[0], expected)


def test_transplant_adds_a_window_of_the_layer(tmp_path):
    """A constant layer: whatever window is cut, the result is clip(image + 40), also where it saturates."""
    bench = make_benchmark(tmp_path / "bench", [np.full((20, 30, 3), 40, np.uint8)])
    fn = rain_fn(f"transplant:{bench}", 0)
    for shape in ((12, 16, 3), (50, 45, 3)):  # smaller than the layer, and bigger (scaled up to cover)
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        out = fn(img, "a.png")
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, np.clip(img.astype(np.int16) + 40, 0, 255).astype(np.uint8))
        assert (out == 255).any()  # some pixels saturate


def test_transplant_window_exact_and_scaling(tmp_path):
    rng = np.random.default_rng(3)
    layer = rng.integers(0, 100, (24, 40, 3), dtype=np.uint8)
    img = rng.integers(0, 150, (10, 14, 3), dtype=np.uint8)  # img + layer < 255: no clipping
    out = transplant_layer(img, layer, np.random.default_rng(0))
    assert window_of(out.astype(np.int16) - img, layer)
    # An image bigger than the layer: one factor for both axes (streaks keep their direction), just covering it.
    big = rng.integers(0, 150, (30, 90, 3), dtype=np.uint8)
    out = transplant_layer(big, layer, np.random.default_rng(1))
    factor = max(30 / 24, 90 / 40)
    scaled = cv2.resize(layer, (90, math.ceil(24 * factor)), interpolation=cv2.INTER_LINEAR)
    assert scaled.shape[:2] == (54, 90)
    assert window_of(out.astype(np.int16) - big, scaled)


def test_transplant_seed_and_file_choose_layer_and_window(tmp_path):
    bench = make_benchmark(tmp_path / "bench", [streaks(32, 48, s) for s in range(4)])
    spec = f"transplant:{bench}"
    img = np.full((20, 24, 3), 60, np.uint8)
    a, b = rain_fn(spec, 0), rain_fn(spec, 0)
    assert np.array_equal(a(img, "x.png"), b(img, "x.png"))
    outs = {a(img, f"{k}.png").tobytes() for k in range(8)}
    assert len(outs) > 1  # files get different layers / windows
    assert any(not np.array_equal(a(img, f"{k}.png"), rain_fn(spec, 1)(img, f"{k}.png")) for k in range(8))


def test_transplant_errors_name_the_folder(tmp_path):
    with pytest.raises(EvalError, match="nowhere"):
        rain_fn(f"transplant:{tmp_path / 'nowhere'}", 0)
    only_rain = tmp_path / "only_rain"
    write_rgb(only_rain / "x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(EvalError, match="only_rain"):
        rain_fn(f"transplant:{only_rain}", 0)
    with pytest.raises(EvalError, match="transplant"):
        rain_fn("transplant:", 0)
    bench = make_benchmark(tmp_path / "bench", [streaks(8, 8, 0)])
    with pytest.raises(EvalError, match="rain-scale"):
        rain_fn(f"transplant:{bench}", 0, "2")


def test_transplant_cache_identity(tmp_path):
    a = make_benchmark(tmp_path / "a" / "bench", [streaks(8, 8, 0)])
    b = make_benchmark(tmp_path / "b" / "bench", [streaks(8, 8, 1)])
    ida, idb = rain_id(f"transplant:{a}"), rain_id(f"transplant:{b}")
    assert ida != idb and ida["rain_fingerprint"] != idb["rain_fingerprint"]
    light = rain_id("light")
    assert light["rain"] == "light" and light == rain_id("light") and light["params"] != rain_id("heavy")["params"]
    edited = dataclasses.replace(PRESETS["light"], blend="add" if PRESETS["light"].blend != "add" else "screen")
    with pytest.MonkeyPatch.context() as mp:  # an edited preset of the same name is another rain
        mp.setitem(PRESETS, "light", edited)
        assert rain_id("light")["params"] != light["params"]
    assert rain_label(f"transplant:{a}") == "transplant-bench" and "/" not in rain_label(f"transplant:{a}")


# ----------------------------------------------------------------------------------------------- generalization.py
class ChannelsSeg(nn.Module):
    """20 output channels like ESPNet-Cityscapes: 0-2 pick brightness levels, the rest never win."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centers", torch.tensor(list(CENTERS) + [10.0] * 17).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x.mean(1, keepdim=True) - self.centers) ** 2) * 50


def make_shared(root: Path, parts: tuple[str, ...] = ("kodak", "rain100L", "camvid", "real")) -> Path:
    """A tiny folder with the layout of ../shared (no detector): the ``parts`` asked for."""
    rng = np.random.default_rng(0)
    for i in range(5 if "kodak" in parts else 0):
        clean = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), (5, 5), 0)
        write_rgb(root / "data" / "clean" / "Kodak24" / f"kodim{i + 1:02d}.png", clean)
    if "rain100L" in parts:
        make_benchmark(root / "data" / "rain100L_test", [streaks(32, 40, s) for s in range(3)])
    for i in range(3 if "camvid" in parts else 0):
        mask = np.zeros((24, 36), np.uint8)
        mask[:, 12:24], mask[:, 24:] = 1, 2
        mask[:2] = 11  # void
        level = np.array(CENTERS)[np.minimum(mask, 2)] + rng.normal(0, 0.03, mask.shape)
        img = np.clip(level * 255, 0, 255).astype(np.uint8)
        write_rgb(root / "data" / "camvid_val" / "images" / f"im{i}.png", np.repeat(img[..., None], 3, 2))
        (root / "data" / "camvid_val" / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "data" / "camvid_val" / "masks" / f"im{i}.png"), mask)
    for name in REAL_PHOTOS[:3] if "real" in parts else ():
        write_rgb(root / "data" / "real_rainy" / name, rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
    (root / "models").mkdir(parents=True)
    if "camvid" in parts:
        torch.jit.script(ChannelsSeg()).save(str(root / "models" / "espnet-cityscapes.torchscript"))
        (root / "models" / "cityscapes_to_camvid.json").write_text(json.dumps({"lut": [0, 1, 2] + [11] * 17}))
    return root


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def check_restoration(section: dict, n: int) -> None:
    assert section["images"] == n
    for kind in ("input", "derained"):
        assert set(section[kind]) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
        assert all(math.isfinite(v) for v in section[kind].values())
    assert section["gain"]["psnr_y"] == pytest.approx(section["derained"]["psnr_y"] - section["input"]["psnr_y"])


def test_quick_report_without_detector(tmp_path, weights, capsys):
    shared = make_shared(tmp_path / "shared")
    out = tmp_path / "out"
    rc, stdout, err = run(["--weights", weights, "--out", out, "--shared", shared, "--quick", "--device", "cpu"],
                          capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert {"weights", "in_distribution", "held_out", "detection", "segmentation", "real_photos", "machine",
            "time_s"} <= set(report)
    assert report["weights"] == str(weights) and report["quick"] is True
    for preset in ("light", "heavy"):
        check_restoration(report["in_distribution"][preset], 4)  # quick: 4 of the 5 clean images
    check_restoration(report["held_out"]["rain100L"], 3)
    light, heavy = (report["in_distribution"][p]["input"]["psnr_y"] for p in ("light", "heavy"))
    assert heavy < light  # heavy rain costs more
    skipped = report["detection"]["skipped"]
    assert "coco128.yaml" in skipped and "yolov5n-coco.torchscript" in skipped
    assert report["detection"]["recovered_fraction"] is None
    seg = report["segmentation"]
    assert seg["images"] == 3 and seg["clean"]["miou"] == pytest.approx(1.0) and seg["rainy"]["miou"] < 0.95
    assert math.isfinite(seg["recovered_fraction"])
    c, r, d = (seg[k]["miou"] for k in ("clean", "rainy", "derained"))
    assert seg["recovered_fraction"] == pytest.approx((d - r) / (c - r))
    assert "clean_derained" in seg and seg["rain"].startswith("transplant:")
    assert report["real_photos"] == {"sheet": SHEET, "files": list(REAL_PHOTOS[:2]),
                                     "folder": str(shared / "data" / "real_rainy")}
    sheet = cv2.imread(str(out / SHEET))
    assert sheet.shape[0] == 2 * (22 + 320 + 4) and sheet.shape[1] == 2 * round(45 * 320 / 30) + 6
    md = (out / "report.md").read_text()
    assert md.index("In-distribution") < md.index("Held-out rain: Rain100L") < md.index("segmentation")
    assert "skipped" in md and SHEET in md and report["time_s"]["total"] > 0
    assert (out / "segmentation" / "report.json").is_file()

    # two reports compared (here the same one twice), with the sheet of both weights files
    assert compare_main(["a=" + str(out), "b=" + str(out), "--out", str(tmp_path / "cmp"), "--sheet",
                         "--shared", str(shared), "--device", "cpu"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "report.json").read_text())
    rows = {r["label"]: r for r in cmp["rows"]}
    psnr = rows["Rain100L test, PSNR-Y (dB)"]
    assert psnr["values"] == {"a": report["held_out"]["rain100L"]["derained"]["psnr_y"]} | {
        "b": report["held_out"]["rain100L"]["derained"]["psnr_y"]}
    assert psnr["input"] == report["held_out"]["rain100L"]["input"]["psnr_y"]
    assert rows["CamVid val + transplanted Rain100L rain: recovered fraction of mIoU"]["values"]["a"] == \
        seg["recovered_fraction"]
    assert rows["COCO128 + transplanted Rain100L rain: derained mAP50-95"]["values"]["b"] is None  # skipped
    assert cmp["sheet"]["photos"] == list(REAL_PHOTOS[:3])
    both = cv2.imread(str(tmp_path / "cmp" / SHEET))
    assert both.shape[1] == 3 * round(45 * 320 / 30) + 2 * 6  # rainy | a | b
    assert compare_main(["a=" + str(tmp_path / "none"), "--out", str(tmp_path / "cmp2")]) == 2
    assert compare_main(["a=" + str(out), "b=" + str(out), "--pair", "a:c", "--out", str(tmp_path / "cmp3")]) == 2
    assert not (tmp_path / "cmp3").exists()


def test_quick_report_missing_shared_and_bad_weights(tmp_path, weights, capsys):
    rc, _, err = run(["--weights", tmp_path / "nope.pt", "--out", tmp_path / "o", "--shared", tmp_path], capsys)
    assert rc == 2 and err.startswith("error:") and "nope.pt" in err
    rc, _, err = run(["--weights", weights, "--out", tmp_path / "o", "--shared", tmp_path / "none", "--quick",
                      "--device", "cpu"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for section in (report["in_distribution"]["light"], report["held_out"]["rain100L"], report["detection"],
                    report["segmentation"], report["real_photos"]):
        assert "not found" in section["skipped"]
    assert report["real_photos"]["files"] == [] and not (tmp_path / "o" / SHEET).exists()


def test_quick_report_with_shared_detector(tmp_path, shared_dir, weights, capsys):
    """The real YOLOv5n on 8 COCO128 images with strong transplanted rain: a finite recovered fraction."""
    pytest.importorskip("ultralytics")
    shared = make_shared(tmp_path / "shared", parts=("rain100L",))  # only detection (and held-out PSNR) run
    coco_src, coco = shared_dir / "data" / "coco128", shared / "data" / "coco128"
    for sub in ("images", "labels"):
        (coco / sub / "train").mkdir(parents=True)
    for lab in sorted((coco_src / "labels" / "train").glob("*.txt"))[:8]:
        shutil.copy(lab, coco / "labels" / "train")
        shutil.copy(coco_src / "images" / "train" / f"{lab.stem}.jpg", coco / "images" / "train")
    shutil.copy(coco_src / "coco128.yaml", coco)
    (shared / "models" / "yolov5n-coco.torchscript").symlink_to(shared_dir / "models" / "yolov5n-coco.torchscript")
    out = tmp_path / "out"
    rc, _, err = run(["--weights", weights, "--out", out, "--shared", shared, "--quick", "--device", "cpu"], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert "skipped" in report["in_distribution"]["light"] and "skipped" in report["segmentation"]
    det = report["detection"]
    assert det["images"] == 8 and det["clean"]["map50"] > 0.3
    assert math.isfinite(det["recovered_fraction"])
    c, r, d = (det[k]["map50_95"] for k in ("clean", "rainy", "derained"))
    assert det["recovered_fraction"] == pytest.approx((d - r) / (c - r))
    assert set(det["clean_derained"]) == {"map50", "map50_95"}
    assert (out / "detection" / "report.json").is_file()


def test_cached_copy_two_processes_build_the_same_copy(tmp_path):
    """A second builder that finishes after the first uses the first's copy instead of failing."""
    from jdnet_plugin.eval_tasks.common import MARKER, cached_copy

    def build_second(tmp: Path, final: Path) -> None:
        (tmp / "a.txt").write_text("mine")
        final.mkdir()  # meanwhile another process finishes the same copy
        (final / "a.txt").write_text("theirs")
        (final / MARKER).write_text("{}")

    folder, reused = cached_copy(tmp_path, "copy", {"k": 1}, build_second)
    assert reused and (folder / MARKER).is_file() and (folder / "a.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no partial folder left behind
