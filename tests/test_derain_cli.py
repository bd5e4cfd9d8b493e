"""python -m jdnet_plugin.derain: inputs of every kind, videos, errors, the rain gate and torchrun."""
import os
import subprocess
import sys

import cv2
import numpy as np

from jdnet_plugin.cli.derain import main
from jdnet_plugin.io import read_image, write_image
from jdnet_plugin.metrics import psnr


def _img(h, w, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 4.0 + yy / 7.0)[..., None] * 0.3 + 0.5 + rng.normal(0, 0.05, (h, w, c)))
    img = (np.clip(base, 0, 1) * top).astype(dtype)
    return img[..., 0] if c == 1 else img


def _video(path, frames=5, size=(40, 32), fps=8.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        w.write(np.roll(_img(size[1], size[0], seed=i), i, axis=1))
    w.release()


def _frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    info = (n, cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return info


def test_folder_with_all_kinds(tmp_path, weights, capsys):
    src = tmp_path / "in"
    write_image(src / "rgb.png", _img(24, 30))
    write_image(src / "sub" / "photo.jpg", _img(20, 26, seed=1))
    write_image(src / "gray.png", _img(24, 30, c=1))
    rgba = _img(24, 30, c=4)
    write_image(src / "alpha.png", rgba)
    write_image(src / "deep.png", _img(24, 30, dtype=np.uint16))
    (src / "broken.png").write_bytes(b"not a png at all")
    _video(src / "clip.mp4")
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out), "--weights", str(weights), "--batch-size", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1  # broken.png failed, everything else was written
    assert "broken.png" in err and "cannot decode" in err
    assert not (out / "broken.png").exists()
    for name in ("rgb.png", "sub/photo.jpg", "gray.png", "alpha.png", "deep.png"):
        a, b = read_image(src / name), read_image(out / name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
    assert not np.array_equal(read_image(out / "rgb.png"), read_image(src / "rgb.png"))
    np.testing.assert_array_equal(read_image(out / "alpha.png")[..., 3], rgba[..., 3])
    assert read_image(out / "deep.png").dtype == np.uint16
    assert _frames(out / "clip.mp4") == (5, 8.0, 40, 32)
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind


def test_files_globs_side_by_side_and_tiles(tmp_path, weights):
    for i in range(3):
        write_image(tmp_path / f"a{i}.png", _img(30, 40, seed=i))
    _video(tmp_path / "v.avi", frames=3)
    out = tmp_path / "out"
    rc = main([str(tmp_path / "a*.png"), str(tmp_path / "v.avi"), "--out", str(out), "--weights", str(weights),
               "--side-by-side", "--tile", "24", "--overlap", "8", "--device", "cpu"])
    assert rc == 0
    for i in range(3):
        sbs = read_image(out / f"a{i}.png")
        assert sbs.shape == (30, 80, 3)
        np.testing.assert_array_equal(sbs[:, :40], _img(30, 40, seed=i))
    assert _frames(out / "v.avi")[::2] == (3, 80)


def test_tiled_output_matches_untiled(tmp_path, weights):
    write_image(tmp_path / "big.png", _img(90, 120))
    main([str(tmp_path / "big.png"), "--out", str(tmp_path / "a"), "--weights", str(weights), "--device", "cpu"])
    main([str(tmp_path / "big.png"), "--out", str(tmp_path / "b"), "--weights", str(weights), "--device", "cpu",
          "--max-pixels", "2500", "--overlap", "16"])
    a, b = read_image(tmp_path / "a" / "big.png"), read_image(tmp_path / "b" / "big.png")
    assert float(psnr(a, b, "rgb")) >= 45 and np.abs(a.astype(int) - b).max() <= 3


def test_never_overwrites_inputs(tmp_path, weights, capsys):
    img = _img(20, 20)
    write_image(tmp_path / "x.png", img)
    rc = main([str(tmp_path), "--out", str(tmp_path), "--weights", str(weights)])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)
    # --out inside the input folder: a rerun does not derain the earlier outputs.
    for _ in range(2):
        assert main([str(tmp_path), "--out", str(tmp_path / "derained"), "--weights", str(weights)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == ["derained/x.png", "x.png"]


def test_errors_are_reported_not_raised(tmp_path, weights, capsys):
    write_image(tmp_path / "x.png", _img(20, 20))
    rc = main([str(tmp_path / "x.png"), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"),
               "--weights", str(weights)])
    assert rc == 1 and "missing.png" in capsys.readouterr().err and (tmp_path / "o" / "x.png").is_file()
    rc = main([str(tmp_path / "x.png"), "--out", str(tmp_path / "o2"), "--weights", str(tmp_path / "nope.pt")])
    assert rc == 2 and "nope.pt" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    rc = main([str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "o3"), "--weights", str(weights)])
    assert rc == 1 and "bad.mp4" in capsys.readouterr().err and not (tmp_path / "o3" / "bad.mp4").exists()


def test_missing_default_weights_says_pass_weights(tmp_path, capsys, monkeypatch):
    from jdnet_plugin import registry

    monkeypatch.setattr(registry, "_WEIGHTS", {})  # as in an install without shipped weights
    write_image(tmp_path / "x.png", _img(20, 20))
    assert main([str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_gate(tmp_path, weights, capsys):
    src = tmp_path / "in"
    for i in range(3):
        write_image(src / f"{i}.png", _img(24, 30, seed=i))
    args = [str(src), "--weights", str(weights), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "closed"), "--gate", "1e9"]) == 0
    assert "0 images or frames derained, 3 without rain copied unchanged" in capsys.readouterr().out
    for i in range(3):  # passed through: the file itself
        assert (tmp_path / "closed" / f"{i}.png").read_bytes() == (src / f"{i}.png").read_bytes()
    assert main([*args, "--out", str(tmp_path / "open"), "--gate", "0"]) == 0
    assert "3 images or frames derained, 0 without" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    for i in range(3):
        assert np.array_equal(read_image(tmp_path / "open" / f"{i}.png"), read_image(tmp_path / "plain" / f"{i}.png"))
    assert main([*args, "--out", str(tmp_path / "bad"), "--gate", "sometimes"]) == 2
    assert "--gate" in capsys.readouterr().err


def test_torchrun_two_ranks_write_what_one_process_writes(tmp_path, weights):
    """torchrun --nproc_per_node 2 (gloo, CPU): each rank takes every other input; the files are identical."""
    src = tmp_path / "in"
    for i in range(5):
        write_image(src / ("sub" if i % 2 else "") / f"{i}.png", _img(20 + i, 26, seed=i))
    # faulthandler: a rank that aborts prints where (stderr is in the failure message).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    common = ["-m", "jdnet_plugin.derain", str(src), "--weights", str(weights), "--device", "cpu"]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "5 of 5 files derained" in two.stdout and "by 2 processes" in two.stdout
    assert two.stdout.count("files derained") == 1  # one summary, from rank 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 5
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
