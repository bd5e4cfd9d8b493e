"""``python -m jdnet_plugin.synth``: a rainy copy of a dataset tree, labels/masks/YAML handled, in-process."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from jdnet_plugin.cli.synth import file_seed, main, rewrite_dataset_yaml
from jdnet_plugin.io import read_rgb, write_rgb
from jdnet_plugin.rain import add_rain, make_generator


def _img(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(20, 200, (4, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "ds"
    write_rgb(src / "images" / "a.png", _img(0))
    write_rgb(src / "images" / "sub" / "b.jpg", _img(1))
    (src / "labels" / "sub").mkdir(parents=True)
    (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (src / "labels" / "sub" / "b.txt").write_text("1 0.4 0.4 0.1 0.1\n")
    (src / "labels" / "train.cache").write_bytes(b"stale")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 5:20] = 3
    (src / "masks").mkdir()
    cv2.imwrite(str(src / "masks" / "a.png"), mask)
    (src / "data.yaml").write_text("# my dataset\ntrain: images\nval: images\nnames:\n  0: cat\n  1: dog\n")
    (src / "notes.txt").write_text("hello\n")
    return src


def _run(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def test_rainy_copy_of_a_tree(tree: Path, tmp_path: Path, capsys):
    dst = tmp_path / "out"
    assert _run(tree, "--out", dst, "--preset", "heavy", "--seed", "3", "--workers", "0") == 0
    assert "2 image(s) with heavy rain" in capsys.readouterr().out
    # Images: same names and sizes, with rain; exactly the rain of their per-path seed.
    a = read_rgb(dst / "images" / "a.png")
    assert a.shape == (40, 48, 3) and not np.array_equal(a, read_rgb(tree / "images" / "a.png"))
    expected = add_rain(read_rgb(tree / "images" / "a.png"), "heavy", generator=make_generator(file_seed(3, "images/a.png")))
    assert np.array_equal(a, expected)
    assert (dst / "images" / "sub" / "b.jpg").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (dst / "images" / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not private like a temp file
    # Labels, masks and other files: byte-identical. Caches and hidden files: not copied.
    for rel in ("labels/a.txt", "labels/sub/b.txt", "masks/a.png", "notes.txt"):
        assert (dst / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert not (dst / "labels" / "train.cache").exists()
    # The dataset YAML points at the copy, comments and keys kept.
    text = (dst / "data.yaml").read_text()
    assert text.startswith("# my dataset\n")
    data = yaml.safe_load(text)
    assert Path(data["path"]) == dst.resolve()
    assert data["train"] == "images" and data["names"] == {0: "cat", 1: "dog"}
    assert "path" not in yaml.safe_load((tree / "data.yaml").read_text())  # source untouched


def test_deterministic_independent_of_workers(tree: Path, tmp_path: Path):
    assert _run(tree, "--out", tmp_path / "o1", "--preset", "mixed", "--seed", "5", "--workers", "0") == 0
    assert _run(tree, "--out", tmp_path / "o2", "--preset", "mixed", "--seed", "5", "--workers", "2") == 0
    assert _run(tree, "--out", tmp_path / "o3", "--preset", "mixed", "--seed", "6", "--workers", "0") == 0
    for rel in ("images/a.png", "images/sub/b.jpg"):
        assert (tmp_path / "o1" / rel).read_bytes() == (tmp_path / "o2" / rel).read_bytes()
    assert (tmp_path / "o1" / "images/a.png").read_bytes() != (tmp_path / "o3" / "images/a.png").read_bytes()


def test_unreadable_image_reported_others_done(tree: Path, tmp_path: Path, capsys):
    (tree / "images" / "broken.png").write_bytes(b"not a png")
    dst = tmp_path / "out"
    assert _run(tree, "--out", dst, "--workers", "0") == 1
    err = capsys.readouterr().err
    assert "images/broken.png" in err and "cannot decode" in err
    assert (dst / "images" / "a.png").is_file() and not (dst / "images" / "broken.png").exists()


def test_refuses_to_write_into_or_over_src(tree: Path, capsys):
    assert _run(tree, "--out", tree) == 2
    assert _run(tree, "--out", tree / "rainy") == 2
    assert _run(tree / "images", "--out", tree) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "inside SRC" in err
    assert not (tree / "rainy").exists()
    assert _run(tree / "images" / "a.png", "--out", tree / "images") == 2
    assert _run(tree / "missing", "--out", tree.parent / "x") == 2
    assert _run(tree, "--out", tree.parent / "x", "--preset", "monsoon-xyz") == 2
    assert "unknown rain preset" in capsys.readouterr().err
    assert _run(tree / "labels", "--out", tree.parent / "x") == 2
    assert "no images" in capsys.readouterr().err
    assert read_rgb(tree / "images" / "a.png").tobytes() == _img(0).tobytes()


def test_single_image_and_resume(tree: Path, tmp_path: Path):
    out = tmp_path / "one.png"
    assert _run(tree / "images" / "a.png", "--out", out, "--seed", "1") == 0
    first = out.read_bytes()
    assert _run(tree / "images" / "a.png", "--out", tmp_path / "dir", "--seed", "1") == 0
    assert (tmp_path / "dir" / "a.png").read_bytes() == first
    # Existing outputs are kept unless --overwrite.
    write_rgb(out, np.zeros((2, 2, 3), np.uint8))
    assert _run(tree / "images" / "a.png", "--out", out, "--seed", "1") == 0
    assert read_rgb(out).shape == (2, 2, 3)
    assert _run(tree / "images" / "a.png", "--out", out, "--seed", "1", "--overwrite") == 0
    assert out.read_bytes() == first


def test_scale_auto_and_keep_pattern(tree: Path, tmp_path: Path):
    dst = tmp_path / "out"
    assert _run(tree, "--out", dst, "--scale", "auto", "--keep", "sub", "--workers", "0") == 0
    assert (dst / "images/sub/b.jpg").read_bytes() == (tree / "images/sub/b.jpg").read_bytes()
    assert not np.array_equal(read_rgb(dst / "images/a.png"), read_rgb(tree / "images/a.png"))
    assert _run(tree, "--out", tmp_path / "o2", "--scale", "-1") == 2


def test_dataset_yaml_paths(tmp_path: Path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    y_src, y_dst = src / "d.yaml", dst / "d.yaml"
    # An absolute path inside SRC, and absolute splits inside it, are mapped into the copy.
    text = f"path: {src}/data  # root\ntrain: {src}/data/images\nval: images\nnames: [a]\n"
    new, warning = rewrite_dataset_yaml(text, y_src, y_dst, src, dst)
    data = yaml.safe_load(new)
    assert warning is None
    assert data["path"] == str((dst / "data").resolve()) and data["train"] == str((dst / "data/images").resolve())
    assert data["val"] == "images" and data["names"] == ["a"]
    # A relative path resolved inside SRC: mapped too, comments kept.
    new, _ = rewrite_dataset_yaml("# c\npath: data # root\ntrain: images\nnc: 1\n", y_src, y_dst, src, dst)
    assert new.startswith("# c\n") and yaml.safe_load(new)["path"] == str((dst / "data").resolve())
    # A path outside SRC cannot point at a copy: kept, with a warning.
    new, warning = rewrite_dataset_yaml("path: /elsewhere\ntrain: x\nnc: 1\n", y_src, y_dst, src, dst)
    assert new == "path: /elsewhere\ntrain: x\nnc: 1\n" and "outside SRC" in warning
    # Not a dataset description: copied as is.
    assert rewrite_dataset_yaml("lr: 0.1\n", y_src, y_dst, src, dst) == (None, None)


def test_module_entry_point():
    import jdnet_plugin.synth as shim

    assert shim.main is main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
