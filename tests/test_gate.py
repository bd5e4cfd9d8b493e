"""jdnet_plugin.gate and the gate= of derain_tensor / derain: scores, thresholds, pass-through."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jdnet_plugin import derain
from jdnet_plugin.gate import AUTO_THRESHOLD, GateStats, crop_boxes, gate_threshold, streak_score
from jdnet_plugin.inference import derain_tensor, rain_score


class HorizontalBlur(nn.Module):
    """Removes thin vertical bright lines (a stand-in derainer) and leaves flat images as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), (1, 7), 1)


def _streaks(h: int = 96, w: int = 144, vertical: bool = True, seed: int = 0) -> torch.Tensor:
    """A grey image with bright streaks 1 px wide, 20 px long, vertical or horizontal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((3, h, w), 0.4)
    for _ in range(60):
        y0, x0 = int(torch.randint(0, h - 20, (1,), generator=g)), int(torch.randint(0, w - 20, (1,), generator=g))
        if vertical:
            x[:, y0:y0 + 20, x0] += 0.4
        else:
            x[:, y0, x0:x0 + 20] += 0.4
    return x.clamp(0, 1)


@pytest.mark.parametrize("spec, expected", [(None, None), ("off", None), ("OFF", None), ("auto", AUTO_THRESHOLD),
                                            (0, 0.0), (2.5, 2.5), ("1.25", 1.25)])
def test_gate_threshold(spec, expected):
    assert gate_threshold(spec) == expected


@pytest.mark.parametrize("bad", ["sometimes", -1, float("nan"), float("inf"), True, [1]])
def test_gate_threshold_rejects(bad):
    with pytest.raises(ValueError, match="gate must be"):
        gate_threshold(bad)


@pytest.mark.parametrize("h, w", [(480, 640), (640, 480), (128, 128), (50, 300), (20, 30)])
def test_crop_boxes_inside_and_spread(h, w):
    boxes = crop_boxes(h, w)
    assert boxes and len(set(boxes)) == len(boxes)  # no crop twice
    for y, x, s in boxes:
        assert s == min(128, h, w) and 0 <= y <= h - s and 0 <= x <= w - s
    if min(h, w) >= 256:
        assert 4 <= len(boxes) <= 8
        assert max(y for y, _, s in boxes) + 128 == h and max(x for _, x, _ in boxes) + 128 == w  # corners reached


def test_streak_score_measures_vertical_streaks_only():
    rainy, flat = _streaks()[None], torch.full((1, 3, 96, 144), 0.4)
    assert streak_score(rainy, flat).item() > 3  # the streaks were removed
    assert streak_score(rainy, rainy).item() == 0  # nothing removed
    horizontal = _streaks(vertical=False)[None]
    assert streak_score(horizontal, flat).item() < 0.2 * streak_score(rainy, flat).item()
    darker = streak_score(flat, rainy)  # the "derainer" added light: nothing was removed
    assert darker.item() == 0
    noise = (flat + 0.2 * torch.rand(flat.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert streak_score(noise, flat).item() < 0.5 * streak_score(rainy, flat).item()  # texture, no streaks


def test_rain_score_and_gate_pass_clean_images_through_unchanged():
    model = HorizontalBlur()
    rainy, clean = _streaks(), torch.rand(3, 96, 144) * 0 + torch.linspace(0, 1, 144)  # a smooth ramp
    scores = rain_score(model, torch.stack([rainy, clean]))
    assert scores.shape == (2,) and scores[0] > 3 > 0.1 > scores[1]
    stats = GateStats()
    out = derain_tensor(model, torch.stack([clean, rainy]), gate="auto", gate_stats=stats)
    assert torch.equal(out[0], clean)  # passed through, bit for bit
    torch.testing.assert_close(out[1], derain_tensor(model, rainy))
    assert (stats.derained, stats.passed, stats.total) == (1, 1, 2)
    assert stats.last == [False, True]  # the latest batch's decisions, in order
    assert "1 of 2 derained" in str(stats)
    derain_tensor(model, rainy[None], gate="auto", gate_stats=stats)
    assert stats.last == [True] and (stats.derained, stats.passed) == (2, 1)
    # off: everything derained; a threshold above every score: nothing
    torch.testing.assert_close(derain_tensor(model, clean, gate="off"), derain_tensor(model, clean))
    assert torch.equal(derain_tensor(model, rainy, gate=1e9), rainy)


def test_derain_gate_keeps_uint8_frames_bit_for_bit():
    model = HorizontalBlur()
    clean = np.tile(np.linspace(0, 255, 144, dtype=np.uint8), (96, 1))[..., None].repeat(3, -1)
    rainy = (_streaks().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    stats = GateStats()
    out = derain(np.stack([clean, rainy]), model, gate="auto", gate_stats=stats)
    assert np.array_equal(out[0], clean) and not np.array_equal(out[1], rainy)
    assert (stats.derained, stats.passed) == (1, 1)
    with pytest.raises(ValueError, match="gate must be"):
        derain(clean, model, gate="maybe")
