"""DerainSegmenter: derain -> normalise -> pad -> segment -> crop, for smp and plain segmenters."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import jdnet_plugin
from jdnet_plugin.integrations import DerainSegmenter, create_smp_model, smp_preprocessing
from jdnet_plugin.integrations.segmentation import IMAGENET_MEAN, IMAGENET_STD, pad_to_multiple, smp_pad_multiple

smp = pytest.importorskip("segmentation_models_pytorch")


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return jdnet_plugin.create_model("jdnet-lite", units=1, scales=1).eval()


class TinySegNet(nn.Module):
    """Encoder-decoder with a skip connection: fails unless H and W are multiples of 4."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.head = nn.Conv2d(8 + 3, classes, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach())
        up = F.interpolate(self.down(x), scale_factor=4)
        return {"out": self.head(torch.cat([up, x], 1)), "size": torch.tensor(x.shape[-2:])}


def _derained(tiny, x):
    with torch.no_grad():
        return tiny(x).clamp(0, 1)


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_smp_sizes_not_divisible_by_32(tiny, arch):
    seg = create_smp_model(arch, "resnet18", classes=3)
    assert smp_pad_multiple(seg) == 32
    assert smp_preprocessing(seg) == (IMAGENET_MEAN, IMAGENET_STD)
    model = DerainSegmenter(seg, model=tiny).eval()
    assert model.pad_multiple == 32
    with torch.no_grad():
        for h, w in [(70, 45), (33, 31)]:
            out = model(torch.rand(1, 3, h, w))
            assert out.shape == (1, 3, h, w)
    if seg.requires_divisible_input_shape:  # the segmenter alone refuses such sizes
        with pytest.raises(RuntimeError, match="divisible by 32"):
            seg(torch.rand(1, 3, 70, 45))


def test_plain_segmenter_normalise_pad_crop(tiny):
    seg = TinySegNet()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    model = DerainSegmenter(seg, model=tiny, mean=mean, std=std, pad_multiple=4)
    x = torch.rand(1, 3, 21, 18)
    out = model(x)
    assert out["out"].shape == (1, 2, 21, 18)
    assert out["size"].tolist() == [24, 20]  # non-image outputs untouched
    seen = seg.seen[-1]
    assert seen.shape == (1, 3, 24, 20)
    expected = (_derained(tiny, x) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[..., :21, :18], expected)
    torch.testing.assert_close(seen, F.pad(expected, (0, 2, 0, 3), mode="reflect"))
    # a plain module with no mean/std gets the image as is (e.g. a segmenter that normalises inside)
    plain = DerainSegmenter(TinySegNet(), model=tiny, pad_multiple=4)
    plain(x)
    torch.testing.assert_close(plain.segmenter.seen[-1][..., :21, :18], _derained(tiny, x))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 21, 18))


def test_pad_to_multiple_small_images_replicate():
    x = torch.rand(1, 3, 5, 6)
    y = pad_to_multiple(x, 32)
    assert y.shape == (1, 3, 32, 32) and torch.equal(y[..., :5, :6], x)
    assert pad_to_multiple(x, 1) is x


def test_frozen_derainer_gets_no_grads_and_stays_eval(tiny):
    seg = create_smp_model("Unet", "resnet18", classes=2, decoder_channels=(16, 16, 16, 16, 16))
    model = DerainSegmenter(seg, model=tiny).train()
    assert model.segmenter.training and not model.derainer.training
    before = {k: v.clone() for k, v in model.derainer.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, target = torch.rand(2, 3, 30, 40), torch.randint(0, 2, (2, 30, 40))
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    assert all(p.grad is None for p in model.derainer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.segmenter.parameters())
    opt.step()
    assert all(torch.equal(v, model.derainer.state_dict()[k]) for k, v in before.items())
    model.train(True)
    assert not model.derainer.training


def test_trainable_derainer_gets_grads(tiny):
    model = DerainSegmenter(TinySegNet(), model=tiny, pad_multiple=4, freeze_derainer=False).train()
    assert model.derainer.training
    out = model(torch.rand(1, 3, 18, 22))["out"]
    out.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.derainer.parameters())
    assert any(p.grad is not None for p in model.segmenter.parameters())


def test_other_smp_encoders_preprocessing():
    seg = create_smp_model("Unet", "tu-resnet18", classes=2)  # timm encoder, built offline
    mean, std = smp_preprocessing(seg)
    assert mean == pytest.approx(IMAGENET_MEAN) and std == pytest.approx(IMAGENET_STD)
    assert smp_preprocessing(TinySegNet()) is None and smp_pad_multiple(TinySegNet()) is None
    seg = create_smp_model("Unet", "resnet18", encoder_depth=4, decoder_channels=(32, 16, 8, 8))
    assert smp_pad_multiple(seg) == 16


def test_no_downloads_and_clear_errors(tiny, tmp_path, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="encoder_weights=None"):
        create_smp_model("Unet", "resnet18", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="unknown smp architecture 'Nope'.*Unet"):
        create_smp_model("Nope")
    seg = TinySegNet()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        DerainSegmenter(seg, tmp_path / "missing.pt")
    if jdnet_plugin.DEFAULT_WEIGHTS in jdnet_plugin.list_weights():
        from jdnet_plugin import registry

        monkeypatch.setattr(registry, "_WEIGHTS", {})
    with pytest.raises(FileNotFoundError, match="no default weights"):
        DerainSegmenter(seg)
    with pytest.raises(TypeError, match="nn.Module"):
        DerainSegmenter(lambda x: x, model=tiny)
    with pytest.raises(ValueError, match="3 values"):
        DerainSegmenter(seg, model=tiny, mean=(0.5,), std=(1.0,))
    assert time.perf_counter() - t0 < 5


def test_weights_from_checkpoint(tiny, tmp_path):
    path = jdnet_plugin.save_checkpoint(tmp_path / "w.pt", tiny)
    seg = TinySegNet()
    model = DerainSegmenter(seg, str(path), pad_multiple=4)
    x = torch.rand(1, 3, 16, 16)
    model(x)
    torch.testing.assert_close(seg.seen[-1], _derained(tiny, x))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_espnet_torchscript_segmenter(shared_dir, tiny):
    path = shared_dir / "models" / "espnet-cityscapes.torchscript"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    espnet = torch.jit.load(str(path), map_location="cpu").eval()
    model = DerainSegmenter(espnet, model=tiny)  # normalisation is inside: identity here, no padding
    assert model.pad_multiple == 1 and torch.equal(model.mean.flatten(), torch.zeros(3))
    x = torch.rand(1, 3, 70, 45)
    with torch.no_grad():  # work_size=0 (ESPNet's own argument, passed through): run at the input size
        out = model(x, 0)
        direct = espnet(_derained(tiny, x), 0)
    assert out.shape == (1, 20, 70, 45)
    torch.testing.assert_close(out, direct)


def test_gate(tiny):
    x = torch.rand(2, 3, 20, 24)
    closed = DerainSegmenter(TinySegNet(), model=tiny, pad_multiple=4, gate=1e9).eval()
    assert torch.equal(closed.derain(x), x) and closed.gate_stats.passed == 2
    opened = DerainSegmenter(TinySegNet(), model=tiny, pad_multiple=4, gate="0").eval()
    torch.testing.assert_close(opened.derain(x), _derained(tiny, x))
    assert opened.gate_stats.derained == 2
    with pytest.raises(ValueError, match="gate must be"):
        DerainSegmenter(TinySegNet(), model=tiny, gate=-1)


class _VerticalLineRemover(nn.Module):
    """A stand-in derainer in half precision (as under autocast): removes thin vertical bright lines and leaves
    flat images alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (3, 3, 0, 0), mode="replicate"), (1, 7), 1)
        return y.to(torch.bfloat16)


def test_gate_on_a_mixed_batch_in_half_precision():
    """One rainy and one flat image: only the rainy one is derained, in any dtype the derainer returns."""
    rainy = torch.full((3, 40, 48), 0.4)
    rainy[:, 5:35, ::6] = 0.9  # vertical streaks
    flat = torch.full((3, 40, 48), 0.4)
    x = torch.stack([rainy, flat])
    model = DerainSegmenter(TinySegNet(), model=_VerticalLineRemover(), pad_multiple=4, gate="auto").eval()
    y = model.derain(x)
    assert y.dtype == x.dtype and torch.equal(y[1], flat) and not torch.allclose(y[0], rainy, atol=0.05)
    assert (model.gate_stats.derained, model.gate_stats.passed) == (1, 1)
