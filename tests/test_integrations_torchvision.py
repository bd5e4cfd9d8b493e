"""JDNetTransform: types, shapes, dtypes and ranges kept; only images derained; pipelines and workers."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

import jdnet_plugin
from jdnet_plugin.integrations import JDNetTransform
from jdnet_plugin.integrations._weights import derain_batch, resolve_derainer
from jdnet_plugin.integrations.torchvision_transform import derain_image


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return jdnet_plugin.create_model("jdnet-lite", units=1, scales=1).eval()


@pytest.fixture(scope="module")
def transform(tiny) -> JDNetTransform:
    return JDNetTransform(model=tiny)


def _ref(tiny, x_float: torch.Tensor) -> torch.Tensor:
    """The derainer applied directly: what every input type must come down to."""
    with torch.no_grad():
        return tiny(x_float).clamp(0, 1)


def test_exports():
    import jdnet_plugin.integrations as integrations

    for name in ("JDNetTransform", "attach_derain", "detach_derain", "DerainSegmenter"):
        assert name in integrations.__all__ and hasattr(integrations, name)


def test_import_without_optional_extras():
    # ultralytics and smp are extras: the package imports without them, and says what to install when used
    code = (
        "import sys\n"
        "sys.modules['ultralytics'] = None\n"
        "sys.modules['segmentation_models_pytorch'] = None\n"
        "import jdnet_plugin.integrations as integrations\n"
        "from jdnet_plugin.integrations.segmentation import create_smp_model\n"
        "for fn in (lambda: integrations.attach_derain(object()), lambda: create_smp_model('Unet')):\n"
        "    try:\n"
        "        fn()\n"
        "    except ImportError as e:\n"
        "        print('ImportError:', e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert "jdnet-plugin[ultralytics]" in lines[0] and "jdnet-plugin[smp]" in lines[1]


def test_float_tensor_equals_model(transform, tiny):
    x = torch.rand(3, 17, 23)
    out = transform(x)
    assert type(out) is torch.Tensor and out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, _ref(tiny, x[None])[0])
    assert not torch.equal(out, x)  # it did something
    batch = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    out = transform(batch)
    assert out.dtype == torch.float64 and out.shape == batch.shape and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, _ref(tiny, batch.float()).double())


def test_uint8_tensor_keeps_range(transform, tiny):
    x = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    out = transform(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    expected = _ref(tiny, x.float() / 255)
    assert (out.float() / 255 - expected).abs().max() <= 1 / 255 + 1e-6
    assert (out.int() - x.int()).abs().max() > 2


def test_pil_in_pil_out(transform, tiny):
    arr = np.random.default_rng(0).integers(0, 256, (21, 33, 3), dtype=np.uint8)
    out = transform(PIL.Image.fromarray(arr))
    assert isinstance(out, PIL.Image.Image) and out.mode == "RGB" and out.size == (33, 21)
    expected = _ref(tiny, torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)[0]
    got = torch.from_numpy(np.array(out)).permute(2, 0, 1).float() / 255
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
    gray = transform(PIL.Image.fromarray(arr[..., 0]))
    assert gray.mode == "L" and gray.size == (33, 21)
    rgba = PIL.Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 77, np.uint8)]))
    out = transform(rgba)
    assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == 77).all()
    with pytest.raises(ValueError, match="mode 'P'"):
        transform(PIL.Image.new("P", (8, 8)))


def test_grayscale_tensor_derained_as_rgb(transform, tiny):
    g = torch.rand(1, 16, 16)
    out = transform(g)
    assert out.shape == (1, 16, 16)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # BT.601, as OpenCV
    expected = (_ref(tiny, g.expand(3, -1, -1)[None])[0] * luma).sum(0, keepdim=True)
    torch.testing.assert_close(out, expected)


def test_tv_tensors_kept_and_targets_untouched(transform):
    img = tv_tensors.Image(torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2.0, 10.0, 12.0]]), format="XYXY", canvas_size=(24, 32))
    mask = tv_tensors.Mask(torch.randint(0, 3, (24, 32), dtype=torch.uint8))
    labels = torch.tensor([4])
    sample = {"image": img, "target": {"boxes": boxes, "masks": mask, "labels": labels, "name": "a.png"}}
    boxes0, mask0, labels0 = boxes.clone(), mask.clone(), labels.clone()
    out = transform(sample)
    assert type(out["image"]) is tv_tensors.Image and out["image"].dtype == torch.uint8
    assert not torch.equal(out["image"], img)
    t = out["target"]
    assert t["boxes"] is boxes and t["masks"] is mask and t["labels"] is labels and t["name"] == "a.png"
    assert torch.equal(boxes, boxes0) and torch.equal(mask, mask0) and torch.equal(labels, labels0)
    assert type(t["boxes"]) is tv_tensors.BoundingBoxes and type(t["masks"]) is tv_tensors.Mask
    # tuple samples too; without an Image the first plain tensor is the image (torchvision's rule)
    x, y = transform(torch.rand(3, 8, 8), torch.tensor([1.0, 2.0]))
    assert torch.equal(y, torch.tensor([1.0, 2.0])) and x.shape == (3, 8, 8)


@pytest.mark.parametrize("shape", [(4, 3, 12, 12), (2, 3, 3, 12, 12)])
def test_video_stays_video(transform, tiny, shape):
    v = tv_tensors.Video(torch.rand(*shape))
    out = transform(v)
    assert type(out) is tv_tensors.Video and out.shape == v.shape
    torch.testing.assert_close(out.as_subclass(torch.Tensor).reshape(-1, 3, 12, 12),
                               _ref(tiny, v.as_subclass(torch.Tensor).reshape(-1, 3, 12, 12)))


def test_old_torchvision_method_names(transform):
    # torchvision < 0.21 calls ``_transform`` from its forward; replay that forward on a sample.
    from torch.utils._pytree import tree_flatten, tree_unflatten

    img = tv_tensors.Image(torch.rand(3, 10, 10))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 1.0, 4.0, 4.0]]), format="XYXY", canvas_size=(10, 10))
    flat, spec = tree_flatten((img, {"boxes": boxes, "labels": torch.tensor([1])}))
    needs = transform._needs_transform_list(flat)
    assert needs == [True, False, False]
    out = tree_unflatten([transform._transform(x, {}) if n else x for x, n in zip(flat, needs)], spec)
    torch.testing.assert_close(out[0], transform(img))
    assert out[1]["boxes"] is boxes


def test_compose_pipeline(transform):
    pipe = v2.Compose([v2.ToImage(), transform, v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    arr = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), format="XYXY", canvas_size=(16, 20))
    img, b = pipe(PIL.Image.fromarray(arr), boxes)
    assert type(img) is tv_tensors.Image and img.dtype == torch.float32 and img.shape == (3, 16, 20)
    assert b.tolist() == [[15.0, 0.0, 20.0, 5.0]]  # the flip still reaches the boxes


def test_tiny_images_and_bad_shapes(transform):
    assert transform(torch.rand(3, 2, 3)).shape == (3, 2, 3)  # below the model's minimum size: padded, cropped
    with pytest.raises(ValueError, match="C in 1, 3, 4"):
        derain_image(torch.rand(5, 8, 8), transform.model)
    with pytest.raises(ValueError, match="RGB images"):
        derain_batch(transform.model, torch.rand(1, 1, 8, 8))


def test_inference_tensors_not_leaked(transform):
    out = transform(torch.rand(3, 8, 8))
    assert not out.is_inference()
    out.mul_(2)  # in-place ops must work on the result


def test_moves_with_to_and_stays_eval(tiny):
    t = JDNetTransform(model=jdnet_plugin.create_model("jdnet-lite", units=1, scales=1))
    t.train()
    assert not t.model.training
    t = t.to(torch.float64).to("cpu")
    assert next(t.model.parameters()).dtype == torch.float64
    out = t(torch.rand(3, 8, 8))  # runs in the model's dtype, hands back the input's dtype
    assert out.dtype == torch.float32


def test_weights_from_checkpoint_and_clear_errors(tiny, tmp_path):
    path = jdnet_plugin.save_checkpoint(tmp_path / "w.pt", tiny)
    t = JDNetTransform(str(path))
    x = torch.rand(3, 10, 10)
    torch.testing.assert_close(t(x), _ref(tiny, x[None])[0])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        JDNetTransform(tmp_path / "nope.pt")
    with pytest.raises(TypeError, match="not both"):
        JDNetTransform(str(path), model=tiny)


def test_default_weights_missing_fails_fast(monkeypatch):
    if jdnet_plugin.DEFAULT_WEIGHTS in jdnet_plugin.list_weights():
        from jdnet_plugin import registry

        monkeypatch.setattr(registry, "_WEIGHTS", {})
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no default weights"):
        JDNetTransform()
    with pytest.raises(FileNotFoundError, match="no default weights"):
        resolve_derainer(None)
    assert time.perf_counter() - t0 < 5


class _Images(Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        img = tv_tensors.Image(torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g))
        return self.transform(img, {"label": i})


def test_dataloader_workers(transform):
    loader = DataLoader(_Images(transform), batch_size=2, num_workers=2)
    got = [(x, y["label"]) for x, y in loader]
    serial = [_Images(transform)[i] for i in range(4)]
    imgs = torch.cat([x for x, _ in got])
    assert imgs.shape == (4, 3, 12, 12) and imgs.dtype == torch.uint8
    assert torch.equal(imgs, torch.stack([x for x, _ in serial]))
    assert torch.cat([y for _, y in got]).tolist() == [0, 1, 2, 3]


def test_gate_passes_images_without_rain_through_and_counts(tiny):
    x = torch.rand(2, 3, 32, 40)
    closed = JDNetTransform(model=tiny, gate=1e9)  # no image scores that high
    assert torch.equal(closed(x), x) and (closed.gate_stats.derained, closed.gate_stats.passed) == (0, 2)
    img = PIL.Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(closed(img)), np.asarray(img))
    opened = JDNetTransform(model=tiny, gate=0)  # every score is >= 0
    torch.testing.assert_close(opened(x), JDNetTransform(model=tiny)(x))
    assert opened.gate_stats.derained == 2
    with pytest.raises(ValueError, match="gate must be"):
        JDNetTransform(model=tiny, gate="sometimes")
