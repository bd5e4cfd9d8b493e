"""Datasets and paired transforms: every format, aligned crops, determinism, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from jdnet_plugin.data import (ConcatDataset, DatasetError, PairedAugment, PairedImageDataset, SideBySideDataset,
                               SyntheticRainDataset, UnpairedDataset, collate, detect_format, make_dataset,
                               pair_key, paired_augment, paired_random_crop, scale_range)
from jdnet_plugin.io import write_rgb
from jdnet_plugin.training import InfiniteSampler

OFFSET = 37  # rainy = clean + OFFSET, so a misaligned crop breaks the relation


def _clean(rng: np.random.Generator, h: int = 40, w: int = 48) -> np.ndarray:
    return rng.integers(0, 255 - OFFSET, (h, w, 3), dtype=np.uint8)


def _paired(root: Path, n: int = 3, rain_dir: str = "rain", clean_dir: str = "norain",
            rain_fmt: str = "rain-{:03d}.png", clean_fmt: str = "norain-{:03d}.png") -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        c = _clean(rng)
        write_rgb(root / clean_dir / clean_fmt.format(i + 1), c)
        write_rgb(root / rain_dir / rain_fmt.format(i + 1), c + OFFSET)
    return root


def _side_by_side(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        c = _clean(rng)
        write_rgb(root / f"{i}.png", np.concatenate([c, c + OFFSET], axis=1))  # clean left, rainy right
    return root


def _aligned(item: dict) -> bool:
    return torch.allclose(item["rain"] - item["clean"], torch.full_like(item["rain"], OFFSET / 255), atol=1e-6)


def test_pair_key_matches_rain100l_names():
    assert pair_key(Path("rain-001.png")) == ("001", "rain")
    assert pair_key(Path("norain-001.png")) == ("001", "clean")
    assert pair_key(Path("rainstreak-001.png"))[1] is None


@pytest.mark.parametrize("layout", ["rain100l", "same_names", "input_target", "flat"])
def test_paired_folder_layouts_give_aligned_crops(tmp_path, layout):
    if layout == "rain100l":
        _paired(tmp_path)
    elif layout == "same_names":
        _paired(tmp_path, rain_fmt="{:03d}.png", clean_fmt="{:03d}.png")
    elif layout == "input_target":
        _paired(tmp_path, rain_dir="input", clean_dir="target", rain_fmt="{:03d}.png",
                clean_fmt="{:03d}.png")
    else:  # JORDER's Rain100L train: everything in one folder
        _paired(tmp_path, rain_dir=".", clean_dir=".")
        write_rgb(tmp_path / "rainstreak-001.png", np.zeros((40, 48, 3), np.uint8))
    assert detect_format(tmp_path) == "paired"
    ds = make_dataset(tmp_path, patch_size=16, seed=3)
    assert isinstance(ds, PairedImageDataset) and len(ds) == 3
    for i in range(len(ds)):
        for draw in range(4):
            item = ds[(i, draw)]
            assert item["rain"].shape == item["clean"].shape == (3, 16, 16)
            assert item["rain"].dtype == torch.float32
            assert _aligned(item)
    assert ds[0]["name"] in ("001", "rain-001")


def test_pair_dirs_names_any_two_folders(tmp_path):
    _paired(tmp_path, rain_dir="A", clean_dir="B", rain_fmt="{:03d}.png", clean_fmt="{:03d}.png")
    with pytest.raises(DatasetError):
        make_dataset(tmp_path, patch_size=8, require_pairs=True)
    ds = make_dataset(tmp_path, patch_size=8, pair_dirs=["A", "B"])
    assert len(ds) == 3 and _aligned(ds[(2, 5)])


def test_random_crops_move_and_whole_images_without_patch(tmp_path):
    ds = make_dataset(_paired(tmp_path), patch_size=8)
    crops = {tuple(ds[(0, d)]["clean"][:, 0, 0].tolist()) for d in range(10)}
    assert len(crops) > 1  # different draws, different windows
    full = make_dataset(tmp_path)
    assert full[0]["rain"].shape == (3, 40, 48) and _aligned(full[0])


def test_side_by_side_clean_left_rainy_right(tmp_path):
    _side_by_side(tmp_path)
    assert detect_format(tmp_path) == "side-by-side"
    ds = make_dataset(tmp_path, patch_size=16)
    assert isinstance(ds, SideBySideDataset)
    item = ds[(1, 7)]
    assert item["rain"].shape == (3, 16, 16) and _aligned(item)
    whole = make_dataset(tmp_path)[0]
    assert whole["clean"].shape == (3, 40, 48)
    assert (whole["rain"] > whole["clean"]).all()  # the rainy half is the brighter, right one


def test_unpaired_returns_rain_and_name(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(2):
        write_rgb(tmp_path / "sub" / f"photo{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    assert detect_format(tmp_path) == "unpaired"
    ds = make_dataset(tmp_path)
    assert isinstance(ds, UnpairedDataset) and len(ds) == 2
    item = ds[1]
    assert set(item) == {"rain", "name"} and item["rain"].shape == (3, 20, 30) and item["name"] == "sub/photo1"
    with pytest.raises(DatasetError, match="without clean ground truth"):
        make_dataset(tmp_path, require_pairs=True)


def test_synthetic_rain_on_clean_tree(tmp_path):
    rng = np.random.default_rng(3)
    for i, sub in enumerate(["a", "b/c"]):
        write_rgb(tmp_path / sub / f"{i}.png", rng.integers(0, 200, (48, 40, 3), dtype=np.uint8))
    for preset in ("light", "heavy", "mixed"):
        ds = make_dataset(tmp_path, patch_size=32, synthetic_rain=preset, seed=1)
        assert isinstance(ds, SyntheticRainDataset) and len(ds) == 2
        a, b = ds[(1, 4)], ds[(1, 4)]
        assert a["rain"].shape == a["clean"].shape == (3, 32, 32)
        assert torch.equal(a["rain"], b["rain"]) and torch.equal(a["clean"], b["clean"])
        assert not torch.equal(a["rain"], a["clean"])  # rain was added
        assert 0 <= a["rain"].min() and a["rain"].max() <= 1
    item = make_dataset(tmp_path, synthetic_rain="light")[(0, 0)]
    assert item["clean"].shape == (3, 48, 40)


def test_determinism_independent_of_workers(tmp_path):
    ds = make_dataset(_paired(tmp_path, n=5), patch_size=8, seed=11)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=3, sampler=InfiniteSampler(len(ds), seed=5), num_workers=workers,
                            collate_fn=collate)
        it = iter(loader)
        return [next(it)["rain"] for _ in range(4)]

    a, b = batches(0), batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = make_dataset(tmp_path, patch_size=8, seed=12)
    assert not all(torch.equal(ds[(i, i)]["rain"], other[(i, i)]["rain"]) for i in range(5))


@pytest.mark.parametrize("concat", [False, True])
def test_int_index_draws_fresh_rain_each_epoch_of_a_shuffled_loader(tmp_path, concat):
    rng = np.random.default_rng(4)
    for i in range(4):
        write_rgb(tmp_path / f"{i}.png", rng.integers(0, 200, (40, 40, 3), dtype=np.uint8))
    ds = make_dataset(tmp_path, patch_size=24, synthetic_rain="light", seed=1)
    if concat:
        ds = ConcatDataset([ds])

    def epochs(n: int) -> list[dict[str, torch.Tensor]]:
        torch.manual_seed(7)
        loader = DataLoader(ds, batch_size=1, shuffle=True, collate_fn=collate)
        return [{b["name"][0]: b["rain"][0] for b in loader} for _ in range(n)]

    first, second = epochs(2)
    assert sorted(first) == sorted(second) and len(first) == 4
    assert all(not torch.equal(first[k], second[k]) for k in first)  # new crop and rain for every image
    again = epochs(2)
    assert all(torch.equal(again[0][k], first[k]) and torch.equal(again[1][k], second[k]) for k in first)


def test_sampler_resumes_and_splits_ranks():
    full = InfiniteSampler(7, seed=2)
    it = iter(full)
    stream = [next(it) for _ in range(30)]
    assert sorted(i for i, _ in stream[:7]) == list(range(7))  # one epoch = one permutation
    assert [d for _, d in stream] == list(range(30))
    resumed = iter(InfiniteSampler(7, seed=2, start=12))
    assert [next(resumed) for _ in range(18)] == stream[12:]
    r0, r1 = iter(InfiniteSampler(7, seed=2, rank=0, world_size=2)), iter(InfiniteSampler(7, seed=2, rank=1,
                                                                                          world_size=2))
    assert [next(r0) for _ in range(5)] == stream[0:10:2]
    assert [next(r1) for _ in range(5)] == stream[1:10:2]


def test_concat_of_several_folders(tmp_path):
    a, b = _paired(tmp_path / "a", n=2), _side_by_side(tmp_path / "b", n=3)
    ds = make_dataset([a, b], patch_size=8)
    assert isinstance(ds, ConcatDataset) and len(ds) == 5
    assert all(_aligned(ds[(i, 1)]) for i in range(5))


def test_errors_name_the_files(tmp_path):
    root = _paired(tmp_path / "sizes", n=2)
    write_rgb(root / "rain" / "rain-002.png", np.zeros((30, 48, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"rain-002\.png is 30x48.*norain-002\.png is 40x48"):
        make_dataset(root, patch_size=8)

    with pytest.raises(DatasetError, match=r"crop 64x64 is bigger than the image \(40x48\)"):
        make_dataset(_paired(tmp_path / "small", n=1), patch_size=64)

    nomatch = tmp_path / "nomatch"
    write_rgb(nomatch / "rain" / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_rgb(nomatch / "norain" / "y.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"no usable rainy/clean pairs.*x\.png.*y\.png"):
        make_dataset(nomatch)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        make_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        make_dataset(tmp_path / "missing")

    odd = tmp_path / "odd"
    write_rgb(odd / "p.png", np.zeros((10, 21, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"p\.png: width 21 is odd"):
        SideBySideDataset(odd)

    corrupt = _paired(tmp_path / "corrupt", n=1)
    (corrupt / "rain" / "rain-001.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"rain-001\.png"):
        make_dataset(corrupt)


def test_paired_transforms_keep_pairs_together():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 200, (12, 12, 3), dtype=np.uint8)
    a, b = paired_random_crop([clean, clean + 1], 5, np.random.default_rng(4))
    assert a.shape == (5, 5, 3) and (b.astype(int) - a == 1).all()
    seen = set()
    for s in range(16):
        x, y = paired_augment([clean, clean + 1], np.random.default_rng(s), hflip=True, vflip=True, rot90=True)
        assert (y.astype(int) - x == 1).all()
        seen.add(x.tobytes())
    assert len(seen) > 4
    assert not PairedAugment().enabled  # off by default, as the authors had it
    x, = PairedAugment()([clean], np.random.default_rng(0))
    assert np.array_equal(x, clean)
    with pytest.raises(ValueError, match="bigger than the image"):
        paired_random_crop([clean], 13, rng)


def test_clean_fraction_leaves_that_share_of_samples_dry(tmp_path):
    rng = np.random.default_rng(4)
    write_rgb(tmp_path / "a.png", rng.integers(0, 200, (40, 40, 3), dtype=np.uint8))
    dry = [torch.equal(s["rain"], s["clean"]) for s in
           (make_dataset(tmp_path, patch_size=16, synthetic_rain="mixed", clean_fraction=0.25)[(0, k)]
            for k in range(200))]
    assert 30 <= sum(dry) <= 70  # about 50 of 200
    plain = make_dataset(tmp_path, patch_size=16, synthetic_rain="mixed")
    assert not any(torch.equal(plain[(0, k)]["rain"], plain[(0, k)]["clean"]) for k in range(50))
    with pytest.raises(DatasetError, match="clean_fraction"):
        make_dataset(tmp_path, synthetic_rain="light", clean_fraction=1.5)


def test_render_scale_draws_on_a_larger_window_and_shrinks_it_to_the_crop(tmp_path):
    # A one-pixel checkerboard: kept by a crop at its own scale, averaged to grey once a window twice the crop is
    # shrunk to it (antialiased), rainy image and target alike.
    board = (np.indices((48, 40)).sum(axis=0) % 2 * 200)[..., None].repeat(3, axis=2).astype(np.uint8)
    write_rgb(tmp_path / "a.png", board)
    own = make_dataset(tmp_path, patch_size=16, synthetic_rain="light", clean_fraction=1.0)[(0, 1)]
    assert own["clean"].std() > 0.3
    for scale, spread in ((2.0, 0.02), ([1.5, 1.5], 0.2)):
        ds = make_dataset(tmp_path, patch_size=16, synthetic_rain="light", clean_fraction=1.0, render_scale=scale)
        s = ds[(0, 1)]
        assert s["clean"].shape == s["rain"].shape == (3, 16, 16)
        assert s["clean"].std() < spread and abs(s["clean"].mean() - 100 / 255) < 0.03
    wet = make_dataset(tmp_path, patch_size=16, synthetic_rain="heavy", render_scale=[1, 3])
    for k in range(4):  # windows up to 48 px clamp to the 40-px side; the pair stays aligned, rain over the target
        s = wet[(0, k)]
        assert s["rain"].shape == s["clean"].shape == (3, 16, 16)
        assert not torch.equal(s["rain"], s["clean"])


def test_render_scale_off_draws_nothing_and_bad_values_are_named(tmp_path):
    write_rgb(tmp_path / "a.png", np.random.default_rng(5).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    plain = make_dataset(tmp_path, patch_size=16, synthetic_rain="light")
    for off in (1, [1.0, 1.0], [1]):  # the random stream of runs made before the setting existed
        same = make_dataset(tmp_path, patch_size=16, synthetic_rain="light", render_scale=off)
        assert all(torch.equal(plain[(0, k)]["rain"], same[(0, k)]["rain"]) for k in range(3))
    assert scale_range(2) == (2.0, 2.0) and scale_range([1, 2.5]) == (1.0, 2.5)
    for bad in (0.5, [2, 1], [1, 2, 3], "x", "12", True, None):
        with pytest.raises(DatasetError, match="render_scale must be"):
            scale_range(bad)
    with pytest.raises(DatasetError, match="render_scale needs a patch_size"):
        make_dataset(tmp_path, synthetic_rain="light", render_scale=2)
