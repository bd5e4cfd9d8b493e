"""The benchmark scripts' own arithmetic: the FLOP count behind the FLOP-limit ratio, the machine record, the rain
layer and streak-residue measures."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _results  # noqa: E402
import flop_limit  # noqa: E402
import rain_layer_stats  # noqa: E402
import removal_balance  # noqa: E402
import streak_residue  # noqa: E402


def test_network_flops_match_the_paper_model():
    # The architecture document: about 418 GFLOP (convolutions only) for one 320x480 image.
    assert flop_limit.network_flops("jdnet", (320, 480)) == pytest.approx(418e9, rel=1e-3)


def test_network_flops_grow_with_the_image():
    small, big = flop_limit.network_flops("jdnet-lite", (64, 64)), flop_limit.network_flops("jdnet-lite", (128, 128))
    assert big == pytest.approx(4 * small, rel=0.02)


def test_machine_info_names_the_cpu_and_its_vector_unit():
    info = _results.machine_info()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        assert info["cpu"] in cpuinfo.read_text()
    assert info["cpu"] and info["simd"] and info["cpu_count"] >= 1
    assert _results.machine_text(info) == f"{info['cpu']} ({info['simd']}), {info['cpu_count']} CPUs"


def test_rain_layer_stats_tell_one_orientation_from_several():
    import numpy as np
    one = np.zeros((64, 64), np.float32)
    one[:, ::8] = 0.5  # vertical streaks on an eighth of the columns
    mean, coverage, coherence, darkened = rain_layer_stats.layer_stats(one)
    assert coverage == pytest.approx(1 / 8) and mean == pytest.approx(0.5 / 8) and darkened == 0
    assert coherence > 0.95
    crossed = np.maximum(one, one.T)
    assert rain_layer_stats.layer_stats(crossed)[2] < 0.1
    assert rain_layer_stats.layer_stats(-one)[3] == pytest.approx(1 / 8)


def test_streak_residue_tells_steps_across_streaks_from_steps_along_them():
    import torch
    img = torch.zeros(1, 3, 20, 30)
    img[..., ::3] = 1.0  # white vertical lines on every third column
    across, along = streak_residue.steps(img, (0, 0, 30, 20))
    assert across == pytest.approx(255 * 2 / 3, rel=0.05) and along == 0
    assert streak_residue.steps(img.transpose(2, 3), (0, 0, 20, 30)) == pytest.approx((0, across))
    assert streak_residue.steps(img, (1, 0, 3, 20)) == (0, 0)  # a box of two dark columns: no step


def test_streak_residue_lines_tell_bright_lines_from_dark_ones():
    import torch
    grey = torch.full((1, 3, 20, 40), 0.5)
    bright, dark = grey.clone(), grey.clone()
    bright[..., 5::10] = 0.7  # a bright line every tenth column, the height of the box
    dark[..., 5::10] = 0.3
    std, skew = streak_residue.lines(bright, (0, 0, 40, 20))
    assert std > 10 and skew > 1
    assert streak_residue.lines(dark, (0, 0, 40, 20)) == pytest.approx((std, -skew))
    assert streak_residue.lines(grey, (0, 0, 40, 20)) == (0.0, 0.0)
    ramp = torch.linspace(0, 1, 60).expand(1, 3, 20, 60).clone()  # a smooth course, no lines: nothing inside
    assert streak_residue.lines(ramp, (20, 0, 40, 20))[0] < 1e-3  # (smoothed in the box alone: about 1)
    broken = bright.clone()
    broken[..., ::2, :] = 0.5  # dashes: half as strong in the column means
    assert streak_residue.lines(broken, (0, 0, 40, 20))[0] == pytest.approx(std / 2, rel=0.01)


def test_streak_residue_zoom_magnifies_the_box_of_each_image_side_by_side():
    a = torch.arange(20.0).view(1, 1, 4, 5).expand(1, 3, 4, 5)
    out = streak_residue.zoom([a, a + 100], (1, 0, 4, 2), scale=2)  # x 1-3, y 0-1
    assert out.shape == (3, 4, 12)
    assert out[0, :, :6].tolist() == [[1, 1, 2, 2, 3, 3]] * 2 + [[6, 6, 7, 7, 8, 8]] * 2
    assert torch.equal(out[:, :, 6:], out[:, :, :6] + 100)


def test_bench_train_profile_accounts_for_the_step_by_operator_and_shape():
    import argparse
    import re

    import bench_train
    args = argparse.Namespace(preset="jdnet-lite", impl="fast", batch=1, patch=32, threads=1, device="cpu",
                              profile=3)
    table = bench_train.profile(args)
    total = float(re.search(r": ([\d.]+) s of operator self time", table).group(1))
    assert total > 0
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| operator")]
    by_op, by_shape = rows[:3], rows[3:]
    assert len(by_op) == 3 and len(by_shape) == 3
    shares = [float(r.split("|")[-2].strip().rstrip("%")) for r in by_op]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100
    op_ms = {r.split("|")[1].strip(): float(r.split("|")[3]) for r in by_op}
    for r in by_shape:  # a shape's time is part of its operator's
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[0] not in op_ms or float(cells[3]) <= op_ms[cells[0]]
    # Shapes recorded: batch 1 of 32x32, as images (1, C, H, W) or as (pixels, channels) matrices.
    assert any("(1, " in r or "(1024, " in r for r in by_shape)


@pytest.mark.parametrize("tag", ["cpu", "cpu-avx512-lite", "run2.b_3"])
def test_result_tag_takes_file_name_parts(tag):
    assert _results.result_tag(tag) == tag


@pytest.mark.parametrize("tag", ["/tmp/x", "../x", "a/b", "", "-x", "a b"])
def test_result_tag_refuses_paths_and_odd_names(tag):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="not a results file tag"):
        _results.result_tag(tag)


def test_removal_balance_tells_removed_rain_from_darkened_dry_pixels():
    """Rain of 0.2 on half the pixels; a derainer that takes 0.25 off everywhere removes more than the rain and
    darkens the dry half by 0.25 (x 255); unpaired photos have no rain figure; no dry pixel: no dry error."""
    clean = torch.full((3, 8, 8), 0.5)
    rainy = clean.clone()
    rainy[..., :4] += 0.2
    removed, rain, dry = removal_balance.balance(rainy, rainy - 0.25, clean)
    assert (removed, rain, dry) == pytest.approx((0.25 * 255, 0.1 * 255, -0.25 * 255), rel=1e-5)
    assert math.isnan(removal_balance.balance(rainy, rainy, None)[1])
    assert math.isnan(removal_balance.balance(clean + 0.1, clean, clean)[2])
