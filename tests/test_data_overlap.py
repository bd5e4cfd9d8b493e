"""No training image holds a benchmark background; the check finds one that does."""
from __future__ import annotations

import numpy as np

from jdnet_plugin.data import benchmark_overlaps, make_dataset
from jdnet_plugin.io import IMAGE_EXTENSIONS, list_images, read_rgb, write_rgb

VALIDATION_ONLY = {"Kodak24"}  # never trained on


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random picture (JPEG keeps it close, as it does photographs)."""
    import cv2

    return cv2.resize((rng.random((4, 6, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def test_overlap_check_finds_a_reencoded_larger_copy(tmp_path):
    rng = np.random.default_rng(0)
    bench = _photo(rng, 64, 96)
    write_rgb(tmp_path / "bench.png", bench)
    bigger = _photo(rng, 80, 120)
    bigger[:64, :96] = bench
    write_rgb(tmp_path / "copy.jpg", bigger, [1, 90])  # JPEG re-encoded
    write_rgb(tmp_path / "other.png", _photo(rng, 80, 120))
    found = benchmark_overlaps([tmp_path / "copy.jpg", tmp_path / "other.png"], [tmp_path / "bench.png"])
    assert [f.name for f, _ in found] == ["copy.jpg"]


def test_no_training_image_is_a_rain100l_background(shared_dir):
    clean = shared_dir / "data" / "clean"
    train = [f for d in sorted(clean.iterdir()) if d.is_dir() and d.name not in VALIDATION_ONLY
             for f in list_images(d)]
    bench = list_images(shared_dir / "data" / "rain100L_test" / "norain")
    assert len(train) > 500 and len(bench) == 100
    assert any(f.suffix.lower() in (".jpg", ".jpeg") for f in train)
    assert benchmark_overlaps(train, bench) == []
    # The check is live on this data: a benchmark background is found among the training files.
    assert benchmark_overlaps(train[:3] + bench[:1], bench)[0][0] == bench[0]


def test_synthetic_rain_over_several_folders_of_jpeg_and_png(tmp_path):
    rng = np.random.default_rng(1)
    for sub, ext in (("a", ".jpg"), ("b", ".png")):
        for i in range(2):
            write_rgb(tmp_path / sub / f"{i}{ext}", (rng.random((80, 90, 3)) * 200).astype(np.uint8))
    assert ".jpg" in IMAGE_EXTENSIONS
    ds = make_dataset([tmp_path / "a", tmp_path / "b"], patch_size=64, synthetic_rain="broad", seed=0)
    assert len(ds) == 4
    items = [ds[(i, 0)] for i in range(4)]
    assert all(it["rain"].shape == (3, 64, 64) for it in items)
    assert sum(not np.array_equal(it["rain"].numpy(), it["clean"].numpy()) for it in items) >= 3
    assert read_rgb(tmp_path / "a" / "0.jpg").shape == (80, 90, 3)
