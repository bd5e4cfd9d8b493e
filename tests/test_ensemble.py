"""Test-time self-ensemble over mirrorings (jdnet_plugin.ensemble)."""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

import jdnet_plugin
from jdnet_plugin.cli._common import add_model_args, model_from_args
from jdnet_plugin.ensemble import FLIPS, FlipEnsemble, flip_ensemble
from jdnet_plugin.inference import derain_tensor


def lopsided() -> nn.Module:
    """A model that treats left and right, top and bottom differently (so every mirroring changes its output)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.arange(9.0).view(1, 1, 3, 3))
    return conv


@pytest.mark.parametrize("flips", list(FLIPS))
def test_flip_ensemble_is_the_mean_over_mirrored_passes(flips):
    model, x = lopsided(), torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        expected = {"h": (model(x) + model(x.flip(-1)).flip(-1)) / 2,
                    "hv": (model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2)
                           + model(x.flip(-2, -1)).flip(-2, -1)) / 4}[flips]
        out = flip_ensemble(model, x, flips)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, model(x), atol=1e-3)  # the mirrored passes count


def test_flip_ensemble_leaves_a_mirror_symmetric_model_as_it_is():
    model = nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        w = (model.weight + model.weight.flip(-1)) / 2
        model.weight.copy_((w + w.flip(-2)) / 2)  # a kernel symmetric both ways: the model commutes with mirrorings
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(flip_ensemble(model, x, "hv"), model(x), atol=1e-6)


def test_an_unknown_ensemble_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'v'.*h, hv"):
        FlipEnsemble(lopsided(), "v")
    with pytest.raises(ValueError, match="unknown self-ensemble"):
        flip_ensemble(lopsided(), torch.rand(1, 3, 4, 4), "x")


def test_flip_ensemble_runs_through_derain_tensor_with_the_models_size_limits():
    model = jdnet_plugin.create_model("jdnet-lite", units=1).eval()
    ens = FlipEnsemble(model, "h")
    assert ens.min_size == model.min_size and ens.tile_align == model.tile_align
    assert ens.inference_bytes_per_pixel == model.inference_bytes_per_pixel
    x = torch.rand(1, 3, 24, 30)
    with torch.no_grad():
        expected = flip_ensemble(model, x, "h").clamp(0, 1)
    assert torch.allclose(derain_tensor(ens, x), expected, atol=1e-5)
    small = torch.rand(1, 3, model.min_size - 1, 20)  # padded up to the derainer's minimum and cropped back
    assert derain_tensor(ens, small).shape == small.shape


@pytest.mark.parametrize("flag, wrapped", [([], False), (["--self-ensemble", "off"], False),
                                           (["--self-ensemble", "hv"], True)])
def test_cli_self_ensemble_wraps_the_loaded_model(tmp_path, flag, wrapped):
    weights = tmp_path / "w.pt"
    jdnet_plugin.save_checkpoint(weights, jdnet_plugin.create_model("jdnet-lite", units=1))
    p = argparse.ArgumentParser()
    add_model_args(p)
    model = model_from_args(p.parse_args(["--weights", str(weights), "--device", "cpu", *flag]))
    assert isinstance(model, FlipEnsemble) == wrapped
    if wrapped:
        assert model.flips == "hv" and isinstance(model.model, jdnet_plugin.JDNet)
