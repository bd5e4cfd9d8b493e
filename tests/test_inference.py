import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import jdnet_plugin
from jdnet_plugin import create_model, save_checkpoint
from jdnet_plugin.inference import (MAX_PIXELS, balanced_tile, default_max_pixels, derain, derain_tensor,
                                    get_model, tile_layout, tile_starts, tile_weights)
from jdnet_plugin.metrics import psnr


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("jdnet-lite", units=1, scales=1).eval()


def _natural(h, w, seed=0) -> torch.Tensor:
    """Smooth colour gradients plus a little texture, (1, 3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([torch.sin(6 * xx + c) * torch.cos(4 * yy - c) for c in range(3)]) * 0.35 + 0.5
    return (base + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)[None]


class _Recorder(nn.Module):
    """Wraps a model and records the shape of every forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.shapes = inner, []
        self.min_size = inner.min_size

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.inner(x)


def test_tile_layout_and_weights():
    assert tile_starts(100, 64, 32) == [0, 18, 36]
    assert tile_starts(100, 60, 16, align=8) == [0, 40]
    with pytest.raises(ValueError, match="multiple of align"):
        tile_starts(100, 64, 16, align=8)
    assert tile_starts(50, 64, 32) == [0]
    # Auto-sized tiles: as many as `tile` needs, no larger than necessary.
    assert balanced_tile(640, 512, 32) == 336 and tile_starts(640, 336, 32) == [0, 304]
    assert balanced_tile(500, 512, 32) == 500
    # Two tiles overlapping by exactly `overlap` blend with weights summing to 1.
    a = tile_weights(64, 16, at_start=True, at_end=False)
    b = tile_weights(64, 16, at_start=False, at_end=True)
    torch.testing.assert_close(a[-16:] + b[:16], torch.ones(16))
    assert a[:48].eq(1).all() and a[-16 // 4:].eq(0).all()


@pytest.mark.parametrize("align", [1, 4, 8, 16])
def test_tile_layout_aligned_covering_overlapping(align):
    rng = np.random.default_rng(align)
    for _ in range(300):
        overlap = int(rng.integers(0, 64))
        tile = int(rng.integers(overlap + 2 * align - 1, 600))
        size = int(rng.integers(1, 3000))
        length, starts = tile_layout(size, tile, overlap, align)
        assert starts[0] == 0 and starts[-1] + length == size and length <= min(size, tile)
        assert all(s % align == 0 for s in starts[:-1] if len(starts) > 1) and (size - length) % align == 0
        assert all(b - a <= length - overlap for a, b in zip(starts, starts[1:]))  # overlap kept
        assert len(starts) <= -(-size // max(1, tile - overlap - 2 * align)) + 1  # not many more than needed


def test_aligned_tiles_match_the_whole_image_beyond_the_blend():
    torch.manual_seed(1)
    deep = create_model("jdnet-lite", units=2).eval()  # 3 scales and SC pooling 4: tiles start at multiples of 8
    assert deep.tile_align == 8
    x = _natural(104, 150)
    full = derain_tensor(deep, x)
    aligned = psnr(derain_tensor(deep, x, tile=72, overlap=24), full, "rgb").item()
    shifted = psnr(derain_tensor(_Recorder(deep), x, tile=72, overlap=24), full, "rgb").item()  # align 1
    assert aligned >= 60 and aligned > shifted + 10, (aligned, shifted)


def test_tiled_matches_untiled(model):
    x = _natural(80, 112)
    full = derain_tensor(model, x)
    assert psnr(full, x, "rgb").item() < 40  # the random model does change the image
    for tile, overlap in ((64, 32), (48, 16)):
        tiled = derain_tensor(model, x, tile=tile, overlap=overlap, batch_size=3)
        assert psnr(tiled, full, "rgb").item() >= 45


def test_pixel_budget_bounds_every_forward_call(model):
    x = torch.cat([_natural(60, 80), _natural(60, 80, seed=1)])
    rec = _Recorder(model)
    out = derain_tensor(rec, x, max_pixels=40 * 40, overlap=12, batch_size=8)
    assert len(rec.shapes) > 1
    assert all(b * h * w <= 40 * 40 for b, _, h, w in rec.shapes)
    assert psnr(out, derain_tensor(model, x), "rgb").min().item() >= 45
    # Small images are batched up to batch_size within the budget.
    rec.shapes.clear()
    derain_tensor(rec, torch.rand(5, 3, 16, 16), batch_size=2)
    assert [s[0] for s in rec.shapes] == [2, 2, 1]


def test_default_pixel_budget_follows_the_model_memory():
    paper, lite = create_model("jdnet"), create_model("jdnet-lite")
    assert default_max_pixels(lite) == MAX_PIXELS
    assert 300_000 < default_max_pixels(paper) < 400_000  # about 2 GB of working memory
    assert default_max_pixels(nn.Identity()) == MAX_PIXELS  # a model that declares nothing

    class Hungry(_Recorder):
        inference_bytes_per_pixel = 1 << 20  # 1 MB a pixel: the smallest budget, 128 x 128

    rec = Hungry(create_model("jdnet-lite", units=1, scales=1).eval())
    derain_tensor(rec, torch.rand(1, 3, 200, 210))
    assert len(rec.shapes) > 1 and all(b * h * w <= 128 * 128 for b, _, h, w in rec.shapes)


def test_batches_equal_single_images(model):
    x = torch.cat([_natural(24, 32, seed=s) for s in range(3)])
    together = derain_tensor(model, x, batch_size=3)
    apart = torch.cat([derain_tensor(model, x[i]) [None] for i in range(3)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)


def test_tiny_images_are_padded_and_cropped(model):
    rec = _Recorder(model)
    out = derain_tensor(rec, torch.rand(1, 3, 2, 3))
    assert out.shape == (1, 3, 2, 3)
    assert min(rec.shapes[0][-2:]) >= model.min_size


def test_output_clamped_ordinary_tensor_on_input_device(model):
    class Loud(nn.Module):
        def forward(self, x):
            return x * 4 - 1

    out = derain_tensor(Loud(), torch.rand(1, 3, 8, 8))
    assert out.min() >= 0 and out.max() <= 1 and (out == 0).any() and (out == 1).any()
    out = derain_tensor(model, torch.rand(3, 8, 8))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32 and not out.is_inference()
    out.add_(0)  # in-place works outside inference mode
    with pytest.raises(ValueError, match="overlap"):
        derain_tensor(model, torch.rand(1, 3, 8, 8), tile=16, overlap=16)
    with pytest.raises(TypeError):
        derain_tensor(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_bfloat16_close_to_float32(model):
    x = _natural(32, 40)
    assert psnr(derain_tensor(model, x, dtype="bfloat16"), derain_tensor(model, x), "rgb").item() > 30


def test_derain_numpy_kinds(model):
    rgb = (_natural(24, 32)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    out = derain(rgb, model)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - rgb).max() > 0
    expected = (derain_tensor(model, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255) * 255)
    np.testing.assert_allclose(out, expected.round().permute(1, 2, 0).numpy(), atol=1)
    # OpenCV BGR order in and out.
    np.testing.assert_array_equal(derain(rgb[..., ::-1], model, bgr=True), out[..., ::-1])
    # Batch, grayscale, alpha, 16 bits, float.
    batch = derain(np.stack([rgb, rgb[::-1]]), model)
    assert batch.shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(batch[0], out)
    gray = derain(rgb[..., 0], model)
    assert gray.shape == (24, 32) and gray.dtype == np.uint8
    alpha = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32, 1)
    rgba = derain(np.concatenate([rgb, alpha], -1), model)
    np.testing.assert_array_equal(rgba[..., 3:], alpha)
    np.testing.assert_array_equal(rgba[..., :3], out)
    deep = derain(rgb.astype(np.uint16) * 257, model)
    assert deep.dtype == np.uint16 and np.abs(deep.astype(int) // 257 - out).max() <= 1
    f = derain(rgb.astype(np.float32) / 255, model)
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1


def test_derain_pil_tensor_list(model):
    x = _natural(20, 28)
    rgb = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for mode in ("RGB", "L", "RGBA", "LA"):
        im = Image.fromarray(rgb).convert(mode)
        out = derain(im, model)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == im.size
    assert derain(Image.fromarray(rgb).convert("P"), model).mode == "RGB"
    t = derain(x, model)
    torch.testing.assert_close(t, derain_tensor(model, x))
    u8 = derain(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), model)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 20, 28)
    outs = derain([rgb, x], model)
    assert isinstance(outs, list) and outs[0].shape == rgb.shape and outs[1].shape == x.shape
    with pytest.raises(TypeError):
        derain("image.png", model)
    with pytest.raises(ValueError, match="either"):
        derain(rgb, model, weights="w.pt")


def test_derain_loads_weights_once(tmp_path, model):
    path = save_checkpoint(tmp_path / "w.pt", model)
    a = get_model(path, "cpu")
    assert get_model(str(path), "cpu") is a
    rgb = np.full((16, 16, 3), 128, np.uint8)
    np.testing.assert_array_equal(jdnet_plugin.derain(rgb, weights=path, device="cpu"), derain(rgb, model))


def test_package_derain_stays_callable_after_importing_the_cli_module(model):
    import importlib

    x = _natural(24, 32)[0]
    before = jdnet_plugin.derain(x, model=model)
    module = importlib.import_module("jdnet_plugin.derain")  # what `python -m` and tools that walk modules do
    assert jdnet_plugin.derain is module and callable(module.main)
    assert torch.equal(jdnet_plugin.derain(x, model=model), before)
