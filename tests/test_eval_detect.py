"""eval_tasks/detect.py: dataset mode on a tiny YOLO dataset, footage mode on a few frames, mAP of detections
against reference detections, recovered fraction, caching and error paths."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")

from jdnet_plugin.eval_tasks.common import rain_fn, recovered_fraction  # noqa: E402
from jdnet_plugin.eval_tasks.detect import detections_map, main, read_yolo_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMES = "".join(f"  {i}: class{i}\n" for i in range(80))


@pytest.fixture(scope="module")
def yolo_pt(tmp_path_factory) -> Path:
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("yolo") / "yolov8n-random.pt"
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").save(path)  # 80 classes, random weights, built offline
    return path


def make_dataset(root: Path, n: int = 3, names: str = NAMES, labels: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i in range(n):
        img = (rng.random((64, 64, 3)) * 80).astype(np.uint8)
        cv2.rectangle(img, (10, 10), (40, 40), (30, 60, 220), -1)
        cv2.imwrite(str(root / "images" / "val" / f"im{i}.jpg"), img)
        if labels:
            (root / "labels" / "val" / f"im{i}.txt").write_text("0 0.39 0.39 0.47 0.47\n2 0.75 0.75 0.2 0.2\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"train: images/val\nval: images/val\nnames:\n{names}")
    return yaml_path


def make_frames(folder: Path, n: int, seed: int) -> Path:
    """A folder of ``n`` random 64x48 PNG frames, f00.png, f01.png, ..."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    return folder


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_recovered_fraction():
    frac, notes = recovered_fraction({"m": 0.6, "k": 0.3}, {"m": 0.2, "k": 0.3}, {"m": 0.5, "k": 0.4}, ["m", "k"])
    assert frac["m"] == pytest.approx(0.75)
    assert frac["k"] is None and any("k:" in n for n in notes)


def test_read_yolo_dataset(tmp_path):
    yaml_path = make_dataset(tmp_path / "ds", n=2)
    ds = read_yolo_dataset(yaml_path)
    assert len(ds.images) == 2 and len(ds.labels) == 2 and len(ds.names) == 80
    assert ds.entries == ["images/val"]


def test_dataset_mode_report_and_cache(tmp_path, yolo_pt, weights, capsys):
    src = tmp_path / "ds"
    yaml_path = make_dataset(src)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    out = tmp_path / "out"
    argv = ["--data", yaml_path, "--model", yolo_pt, "--weights", weights, "--rain", "light", "--out", out,
            "--imgsz", 64, "--seed", 3, "--derain-clean"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert "| clean |" in stdout and "recovered fraction" in stdout
    report = json.loads((out / "report.json").read_text())
    for copy in ("clean", "rainy", "derained", "clean_derained"):
        assert set(report[copy]) == {"map50", "map50_95"}
        assert all(0.0 <= v <= 1.0 for v in report[copy].values())
    expected, _ = recovered_fraction(report["clean"], report["rainy"], report["derained"], ["map50", "map50_95"])
    assert report["recovered_fraction"] == pytest.approx(expected) if expected["map50"] is not None else True
    for m, v in report["recovered_fraction"].items():
        if v is None:
            assert any(n.startswith(m) for n in report["notes"])
    assert (out / "report.md").is_file() and (out / "plot.png").stat().st_size > 1000
    # Nothing written into the user's dataset (Ultralytics' labels .cache goes into the copies).
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    copies = {k: Path(v) for k, v in report["copies"].items()}
    assert list(copies["clean"].rglob("*.cache"))
    rainy_img = copies["rainy"] / "images" / "val" / "im0.jpg"
    assert not np.array_equal(cv2.imread(str(rainy_img)), cv2.imread(str(src / "images" / "val" / "im0.jpg")))
    assert (copies["derained"] / "labels" / "val" / "im0.txt").read_text() == \
        (src / "labels" / "val" / "im0.txt").read_text()
    # The rainy copy is what ``python -m jdnet_plugin.synth SRC --preset light --seed 3`` makes of SRC.
    from jdnet_plugin.cli.synth import main as synth_main

    assert synth_main([str(src), "--out", str(tmp_path / "synth"), "--preset", "light", "--seed", "3",
                       "--workers", "0", "--quiet"]) == 0
    for i in range(3):
        rel = Path("images") / "val" / f"im{i}.jpg"
        assert np.array_equal(cv2.imread(str(tmp_path / "synth" / rel)), cv2.imread(str(copies["rainy"] / rel)))
    mtimes = {p: p.stat().st_mtime_ns for p in (rainy_img, copies["derained"] / "images" / "val" / "im1.jpg")}

    rc, _, err = run(argv, capsys)  # rerun: copies and metrics reused, nothing rebuilt
    assert rc == 0, err
    again = json.loads((out / "report.json").read_text())
    assert again["copies_reused"] == {"clean": True, "rainy": True, "derained": True, "clean_derained": True}
    assert {k: again[k] for k in ("clean", "rainy", "derained")} == {k: report[k] for k in ("clean", "rainy",
                                                                                                "derained")}
    assert again["bootstrap"] == report["bootstrap"]  # the per-image matches were kept with the metrics
    assert set(report["bootstrap"]["intervals"]["map50_95"]) == {"clean", "rainy", "derained", "clean_derained",
                                                                 "clean_cost"}
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_rain_is_deterministic_per_image_and_seed():
    img = np.full((64, 64, 3), 90, np.uint8)
    a, b, c = rain_fn("light", 1), rain_fn("light", 1), rain_fn("light", 2)
    assert np.array_equal(a(img, "x.jpg"), b(img, "x.jpg"))
    assert not np.array_equal(a(img, "x.jpg"), c(img, "x.jpg"))
    assert not np.array_equal(a(img, "x.jpg"), a(img, "y.jpg"))
    assert not np.array_equal(a(img, "x.jpg"), rain_fn("light", 1, "auto")(img, "x.jpg"))  # 64 / 320 scale


def test_dataset_mode_errors(tmp_path, yolo_pt, weights, capsys):
    yaml_path = make_dataset(tmp_path / "ds", n=1)
    base = ["--data", yaml_path, "--model", yolo_pt, "--weights", weights, "--rain", "light", "--out", tmp_path / "o"]

    rc, _, err = run([*base[:2], "--model", tmp_path / "missing.pt", *base[4:]], capsys)
    assert rc == 2 and err.startswith("error:") and "missing.pt" in err

    rc, _, err = run([*base[:4], "--weights", tmp_path / "nope.pt", *base[6:]], capsys)
    assert rc == 2 and "nope.pt" in err

    unlabelled = make_dataset(tmp_path / "nolabels", n=1, labels=False)
    rc, _, err = run(["--data", unlabelled, *base[2:]], capsys)
    assert rc == 2 and "no labels" in err

    two = make_dataset(tmp_path / "two", n=1, names="  0: a\n  1: b\n  2: c\n")
    rc, _, err = run(["--data", two, *base[2:]], capsys)
    assert rc == 2 and "class-count mismatch" in err

    rc, _, err = run(base[:-4] + ["--out", tmp_path / "o"], capsys)  # no --rain
    assert rc == 2 and "--rain" in err

    rc, _, err = run([*base[:-4], "--rain", "no-such-preset", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "no-such-preset" in err

    rc, _, err = run([*base[:-4], "--rain", f"transplant:{tmp_path / 'nobench'}", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and err.startswith("error:") and "nobench" in err


def test_detections_map():
    box = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32)
    ref = {"xyxy": box, "conf": np.array([0.9, 0.8], np.float32), "cls": np.array([0, 2])}
    perfect = detections_map([ref, ref], [ref, ref], ref_conf=0.25, names={0: "a", 2: "c"})
    assert perfect["map50"] > 0.99 and perfect["map50_95"] > 0.99 and set(perfect["per_class"]) == {"a", "c"}
    shifted = {**ref, "xyxy": box + np.array([6, 6, 6, 6], np.float32)}
    worse = detections_map([shifted, shifted], [ref, ref], ref_conf=0.25)
    assert worse["map50"] > 0.99 and worse["map50_95"] < perfect["map50_95"] - 0.2
    wrong_class = {**ref, "cls": np.array([1, 1])}
    assert detections_map([wrong_class], [ref], ref_conf=0.25)["map50"] == 0.0
    none = {"xyxy": np.zeros((0, 4), np.float32), "conf": np.zeros(0, np.float32), "cls": np.zeros(0, np.int64)}
    assert detections_map([none], [ref], ref_conf=0.25)["map50"] == 0.0
    assert detections_map([ref], [none], ref_conf=0.25)["map50"] is None  # no reference objects


def test_footage_mode_folder(tmp_path, yolo_pt, weights, capsys):
    frames = make_frames(tmp_path / "frames", 4, seed=1)
    out = tmp_path / "out"
    argv = ["--source", frames, "--model", yolo_pt, "--weights", weights, "--out", out, "--add-rain", "light",
            "--max-frames", 3, "--imgsz", 64, "--conf", 0.001]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    for copy in ("clean", "rainy", "derained"):
        assert {"mean_count", "mean_conf", "map50", "map50_95"} <= set(report[copy])
    assert report["config"]["frames"] == 3
    # The clean frames' detections are the reference: clean against itself is (nearly) perfect.
    if report["clean"]["map50"] is not None:
        assert report["clean"]["map50"] > 0.99
    rows = (out / "frames.csv").read_text().splitlines()
    assert rows[0].startswith("frame,clean_count,clean_mean_conf,rainy_count") and len(rows) == 4
    cap = cv2.VideoCapture(str(out / "side_by_side.mp4"))
    ok, frame = cap.read()
    assert ok and frame.shape == (48, 128, 3)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    assert report["frames_reused"] is False
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert json.loads((out / "report.json").read_text())["frames_reused"] is True

    rc, _, err = run(["--source", tmp_path / "nothing.mp4", *argv[2:]], capsys)
    assert rc == 2 and "nothing.mp4" in err


def test_script_entry_point(tmp_path):
    """``python eval_tasks/detect.py`` from the repository root works and reports errors cleanly."""
    proc = subprocess.run([sys.executable, "eval_tasks/detect.py", "--data", str(tmp_path / "none.yaml"),
                           "--model", str(tmp_path / "m.pt"), "--rain", "light", "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "m.pt" in proc.stderr


def test_shared_yolov5n_on_coco128(tmp_path, shared_dir, weights, capsys):
    """The real detector on 3 COCO128 images: non-trivial mAP on the clean copy, report consistent."""
    src = shared_dir / "data" / "coco128"
    ds = tmp_path / "coco"
    (ds / "images" / "train").mkdir(parents=True)
    (ds / "labels" / "train").mkdir(parents=True)
    for lab in sorted((src / "labels" / "train").glob("*.txt"))[:3]:
        shutil.copy(lab, ds / "labels" / "train")
        shutil.copy(src / "images" / "train" / f"{lab.stem}.jpg", ds / "images" / "train")
    shutil.copy(src / "coco128.yaml", ds)
    out = tmp_path / "out"
    rc, _, err = run(["--data", ds / "coco128.yaml", "--model", shared_dir / "models" / "yolov5n-coco.torchscript",
                      "--weights", weights, "--rain", "heavy", "--out", out, "--imgsz", 320], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["clean"]["map50"] > 0.3
    frac = report["recovered_fraction"]["map50_95"]
    c, r, d = (report[k]["map50_95"] for k in ("clean", "rainy", "derained"))
    assert frac == pytest.approx((d - r) / (c - r)) if c != r else frac is None
    assert report["per_class"]["clean"]
    # The per-image matches kept for the bootstrap give back the validator's own mAP on all images, and each
    # copy's interval holds its value.
    from jdnet_plugin.eval_tasks.bootstrap import detection_replicates

    for copy in ("clean", "rainy", "derained"):
        with np.load(next((out / "cache").glob(f"metrics-{copy}-*.npz"))) as z:
            matches = dict(z)
        assert sorted(matches["names"]) == sorted(p.name for p in (ds / "images" / "train").iterdir())
        whole = detection_replicates(matches, np.ones((1, 3), np.int64))
        assert whole["map50_95"][0] == pytest.approx(report[copy]["map50_95"])
        assert whole["map50"][0] == pytest.approx(report[copy]["map50"])
        lo, hi = report["bootstrap"]["intervals"]["map50"][copy]
        assert lo <= report[copy]["map50"] <= hi


def test_footage_mode_video_file(tmp_path, yolo_pt, weights, capsys):
    from jdnet_plugin.video import VideoWriter

    rng = np.random.default_rng(2)
    clip = tmp_path / "clip.avi"
    with VideoWriter(clip, fps=12, size=(64, 48)) as w:
        for _ in range(5):
            w.write((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    argv = ["--source", clip, "--model", yolo_pt, "--weights", weights, "--out", out, "--max-frames", 4,
            "--imgsz", 64, "--conf", 0.001]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["frames"] == 4 and report["config"]["fps"] == pytest.approx(12, abs=0.5)
    assert len((out / "frames.csv").read_text().splitlines()) == 5
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    rc, _, err = run(["--source", tmp_path / "broken.avi", *argv[2:]], capsys)
    assert rc == 2 and err.startswith("error:") and "broken.avi" in err


def test_dataset_mode_gate(tmp_path, yolo_pt, weights, capsys):
    yaml_path = make_dataset(tmp_path / "ds", n=2)
    out = tmp_path / "out"
    rc, _, err = run(["--data", yaml_path, "--model", yolo_pt, "--weights", weights, "--rain", "light", "--out", out,
                      "--imgsz", 64, "--derain-clean", "--gate", "1e9"], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["derained_gated"] == report["rainy"] and report["clean_derained_gated"] == report["clean"]
    assert report["gate"]["derained_gated"] == {"threshold": 1e9, "derained": 0, "passed": 2}
    rainy = Path(report["copies"]["rainy"]) / "images" / "val" / "im0.jpg"
    gated = Path(report["copies"]["derained_gated"]) / "images" / "val" / "im0.jpg"
    assert gated.read_bytes() == rainy.read_bytes()  # passed through: the file itself, not encoded again
    # a threshold every image reaches: the gated copy takes the ungated derained copy's files (not derained again)
    rc, _, err = run(["--data", yaml_path, "--model", yolo_pt, "--weights", weights, "--rain", "light", "--out",
                      tmp_path / "out0", "--cache", out / "cache", "--imgsz", 64, "--derain-clean", "--gate", "0"],
                     capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "out0" / "report.json").read_text())
    assert report["gate"]["derained_gated"] == {"threshold": 0.0, "derained": 2, "passed": 0}
    assert report["derained_gated"] == report["derained"] and report["clean_derained_gated"] == report["clean_derained"]
    for copy, twin in [("derained_gated", "derained"), ("clean_derained_gated", "clean_derained")]:
        gated = Path(report["copies"][copy]) / "images" / "val" / "im1.jpg"
        assert gated.resolve() == (Path(report["copies"][twin]) / "images" / "val" / "im1.jpg").resolve()


def test_footage_mode_gate_picks_per_frame(tmp_path, yolo_pt, weights, capsys):
    from jdnet_plugin import load_model
    from jdnet_plugin.eval_tasks.detect import detect_footage
    from jdnet_plugin.inference import rain_score
    from jdnet_plugin.io import read_rgb, to_tensor

    frames = make_frames(tmp_path / "frames", 3, seed=2)
    kw = dict(add_rain="heavy", imgsz=64, conf=0.001, cache=tmp_path / "cache")
    reports = {g: detect_footage(str(frames), str(yolo_pt), weights, tmp_path / f"out{g}", gate=g, **kw)
               for g in ("0", "1e9")}
    always, never = reports["0"], reports["1e9"]
    assert always["gate"]["derained_gated"] == {"threshold": 0.0, "derained": 3, "passed": 0}
    assert never["gate"]["derained_gated"] == {"threshold": 1e9, "derained": 0, "passed": 3}
    for report, same_as in [(always, "derained"), (never, "rainy")]:
        assert report["derained_gated"] == report[same_as]
    assert always["recovered_fraction_gated"] == always["recovered_fraction"]
    # a threshold between the frames' scores derains exactly the frames above it (the scores derain() uses)
    rows = json.loads((tmp_path / "out0" / "frames.json").read_text())
    model = load_model(weights)
    for r in rows:
        rainy = read_rgb(Path(always["frames_cache"]) / "rainy" / f"{r['frame']}.png")
        assert r["rain_score"] == pytest.approx(float(rain_score(model, to_tensor(rainy))), rel=1e-5)
    mid = sorted(r["rain_score"] for r in rows)[1]
    split = detect_footage(str(frames), str(yolo_pt), weights, tmp_path / "outmid", gate=mid, **kw)
    picked = {r["frame"]: r["gate_derained"] for r in json.loads((tmp_path / "outmid" / "frames.json").read_text())}
    assert picked == {r["frame"]: r["rain_score"] >= mid for r in rows} and sum(picked.values()) == 2
    assert split["gate"]["derained_gated"]["derained"] == 2 and split["frames_reused"] is True


def test_read_yolo_dataset_reports_ultralytics_complaints(tmp_path):
    from jdnet_plugin.eval_tasks.common import EvalError

    yaml_path = make_dataset(tmp_path / "ds", n=1)
    bad = tmp_path / "ds" / "bad.yaml"
    bad.write_text(f"path: {tmp_path / 'ds'}\ntrain: images/val\nval: images/val\n")  # neither names nor nc
    with pytest.raises(EvalError, match="bad.yaml.*'names' or 'nc'"):
        read_yolo_dataset(bad)
    bad.write_text(f"path: {tmp_path / 'ds'}\ntrain: images/val\nval: images/missing\nnames: [a]\n")
    with pytest.raises(EvalError, match="bad.yaml.*images not found"):
        read_yolo_dataset(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        read_yolo_dataset(tmp_path / "nowhere.yaml")
    assert read_yolo_dataset(yaml_path).names[0] == "class0"


def test_dataset_mode_derain_at_input(tmp_path, yolo_pt, weights, capsys):
    """--derain-at input: no derained copies; the rainy/clean copies are validated with the derainer at the
    detector's input (what attach_derain(at="input") does), with and without the gate; cached on rerun."""
    yaml_path = make_dataset(tmp_path / "ds", n=2)
    argv = ["--data", yaml_path, "--model", yolo_pt, "--weights", weights, "--rain", "light", "--out",
            tmp_path / "out", "--imgsz", 64, "--derain-clean", "--gate", "1e9", "--derain-at", "input"]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["derain_at"] == "input"
    assert report["copies"]["derained"] == report["copies"]["rainy"]  # the rainy images, derained in val
    assert report["derained_gated"] == report["rainy"] and report["clean_derained_gated"] == report["clean"]
    assert report["gate"]["derained_gated"] == {"threshold": 1e9, "derained": 0, "passed": 2}
    metrics = sorted((tmp_path / "out" / "cache").glob("metrics-*.json"))
    assert len(metrics) == 6  # clean, rainy, derained, clean_derained and the two gated, each its own key
    mtimes = [m.stat().st_mtime_ns for m in metrics]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert [m.stat().st_mtime_ns for m in metrics] == mtimes  # every metric reused
    rc, _, err = run(["--source", tmp_path / "ds" / "images" / "val", "--model", yolo_pt, "--weights", weights,
                      "--out", tmp_path / "f", "--derain-at", "input"], capsys)
    assert rc == 2 and "dataset-mode option" in err
