"""The JDNet model: shapes, gradients, parameter counts, ablations."""
import pytest
import torch

import jdnet_plugin
from jdnet_plugin import JDNet, JDNetConfig, create_model

TINY = dict(channels=16, units=2, scales=2)


@pytest.mark.parametrize("size", [(5, 7), (37, 53), (4, 4)])
def test_any_size_batch(size):
    torch.manual_seed(0)
    model = create_model("jdnet", **TINY).eval()
    x = torch.rand(3, 3, *size)
    with torch.no_grad():
        y = model(x)
        single = model(x[1:2])
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1:2], single, atol=1e-5, rtol=1e-5)  # batch items are independent in eval


def test_output_is_input_minus_rain_layer():
    model = create_model("jdnet", **TINY).eval()
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x - model.rain_layer(x))


@pytest.mark.parametrize("name", ["jdnet", "jdnet-no-sa", "jdnet-no-sa-sc"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(1)
    model = create_model(name, **TINY).train()
    x = torch.rand(2, 3, 13, 9)
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_parameter_counts():
    counts = {n: sum(p.numel() for p in create_model(n).parameters()) for n in jdnet_plugin.list_models()}
    assert counts["jdnet"] == 4_681_859  # the paper's setting
    # The authors' ablations: without self-attention; without self-attention and self-calibration.
    assert counts["jdnet-no-sa"] == 4_656_867
    assert counts["jdnet-no-sa-sc"] == 4_292_323
    assert counts["jdnet-lite"] < counts["jdnet"] / 10


def test_ablations_are_the_same_class_without_the_blocks():
    full, no_sa, none = (create_model(n) for n in ("jdnet", "jdnet-no-sa", "jdnet-no-sa-sc"))
    assert type(full) is type(no_sa) is type(none) is JDNet
    unit_keys = lambda m: {k.split(".")[3] for k in m.state_dict() if k.startswith("derain_net.units.0.")}
    assert unit_keys(full) == {"san", "res_list", "conv11", "scn"}
    assert unit_keys(no_sa) == {"res_list", "conv11", "scn"}
    assert unit_keys(none) == {"res_list", "conv11"}


def test_overrides_and_config_validation():
    model = create_model("jdnet-lite", units=3)
    assert model.config.units == 3 and len(model.derain_net.units) == 3
    with pytest.raises(KeyError, match="registered models"):
        create_model("nope")
    with pytest.raises(ValueError, match="channels"):
        JDNetConfig(channels=7)


@pytest.mark.parametrize("preset", jdnet_plugin.list_models())
def test_create_model_pretrained_loads_the_presets_shipped_weights(preset):
    from jdnet_plugin.registry import get_weights

    shipped = sorted({get_weights(w).name for w in jdnet_plugin.list_weights() if get_weights(w).model == preset})
    if not shipped:
        with pytest.raises(KeyError, match="unknown weights"):
            create_model(preset, pretrained=True)
        return
    model = create_model(preset, pretrained=True)
    assert not model.training and model.config == create_model(preset).config
    default = {k: v for k, v in jdnet_plugin.load_model(f"{model_name(preset)}").state_dict().items()}
    assert all(torch.equal(v, default[k]) for k, v in model.state_dict().items())
    for name in shipped:  # every tag by its full name; without pretrained, the same architecture, random weights
        assert name.startswith(preset + ".")
        tagged, loaded = create_model(name, pretrained=True).state_dict(), jdnet_plugin.load_model(name).state_dict()
        assert tagged.keys() == loaded.keys() and all(torch.equal(v, loaded[k]) for k, v in tagged.items())
        assert create_model(name).config == model.config
    with pytest.raises(ValueError, match="overrides"):
        create_model(preset, pretrained=True, units=model.config.units + 1)


def model_name(preset: str) -> str:
    """The weights that ``create_model(preset, pretrained=True)`` loads."""
    from jdnet_plugin.registry import _PRETRAINED_DEFAULT

    return _PRETRAINED_DEFAULT[preset]


def test_earlier_weights_names_still_load():
    old = jdnet_plugin.load_model("jdnet-lite-synthrain").state_dict()
    assert all(torch.equal(v, old[k]) for k, v in jdnet_plugin.load_model("jdnet-lite.synthrain").state_dict().items())


def test_too_small_or_wrong_input_is_a_clear_error():
    model = create_model("jdnet", **TINY)
    with pytest.raises(ValueError, match="H and W >= 4"):
        model(torch.rand(1, 3, 3, 10))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 8, 8))
    # Self-calibration average-pools by 4, so that ablation needs 4 too; without both, tiny inputs are fine.
    assert create_model("jdnet-no-sa", **TINY).min_size == 4
    assert create_model("jdnet-no-sa-sc", **TINY)(torch.rand(1, 3, 2, 3)).shape == (1, 3, 2, 3)


def test_double_precision():
    model = create_model("jdnet", **TINY).double().eval()
    assert model(torch.rand(1, 3, 6, 6, dtype=torch.double)).dtype == torch.double


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_training_step_under_bf16_autocast(impl):
    """The trainer's amp setting (bf16, its default on CUDA): forward and backward run, every gradient finite."""
    torch.manual_seed(2)
    model = create_model("jdnet-lite", units=2, scales=2).set_attention_impl(impl).train()
    x = torch.rand(2, 3, 17, 15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (model(x).float() - x).abs().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_block_trains_under_bf16_autocast():
    """Its embeddings come out of autocast in bf16, its folded weights and position term in fp32."""
    from jdnet_plugin.archs.jdnet_arch import SAM
    torch.manual_seed(3)
    sam = SAM(8, 2, 8, 4, 7)
    x = torch.randn(2, 8, 10, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sam(x)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in sam.parameters())
