"""jdnet_plugin.utils.color: the luma weights, on images and batches."""
from __future__ import annotations

import pytest
import torch

from jdnet_plugin.utils.color import luma


def test_luma_weights_each_channel_and_keeps_shape_and_dtype():
    img = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1).expand(3, 3, 2, 4)  # a red, a green, a blue image
    y = luma(img)
    assert y.shape == (3, 1, 2, 4) and y.dtype == torch.float64
    assert y[:, 0, 0, 0].tolist() == pytest.approx([0.299, 0.587, 0.114])
    assert torch.equal(luma(img[1]), y[1])  # one image (3, H, W) as in a batch
    assert luma(torch.ones(3, 5, 5)).sub(1).abs().max() < 1e-6  # white stays white
