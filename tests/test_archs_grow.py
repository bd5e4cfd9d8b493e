"""Function-preserving growth of the dense chain."""
import pytest
import torch

from jdnet_plugin.archs.grow import deepen, widen
from jdnet_plugin.registry import create_model, list_models


@pytest.mark.parametrize("name", ["jdnet-lite", "jdnet-no-sa"])
def test_deepened_model_computes_the_same_image(name):
    torch.manual_seed(0)
    small = create_model(name, units=2, scales=2).eval()
    for p in small.parameters():  # no zero weights that would hide a wrong copy
        p.data.add_(0.05 * torch.randn_like(p))
    big = deepen(small, 5).eval()
    assert big.config.units == 5 and len(big.derain_net.units) == 5
    x = torch.rand(2, 3, 17, 23)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)
        big.set_attention_impl("reference")
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)
    # the first units are the small model's, the new ones start as copies of its last
    sd, bd = small.state_dict(), big.state_dict()
    assert all(torch.equal(bd[k], v) for k, v in sd.items() if k in bd and bd[k].shape == v.shape)
    assert torch.equal(bd["derain_net.units.4.conv11.0.weight"], sd["derain_net.units.1.conv11.0.weight"])


def test_new_units_learn_through_their_zero_weights():
    torch.manual_seed(0)
    big = deepen(create_model("jdnet-lite", units=1, scales=1), 3).train()
    opt = torch.optim.SGD(big.parameters(), lr=0.1)
    x = torch.rand(2, 3, 16, 16)
    for _ in range(2):  # the first step opens the zero fusion weights, the second reaches the new units
        opt.zero_grad()
        big(x).square().mean().backward()
        opt.step()
    assert big.derain_net.conv1x1[2][0].weight[:, -16:].abs().max() > 0
    assert big.derain_net.units[2].conv11[0].weight.grad.abs().max() > 0


def test_deepened_model_keeps_dtype_and_impl():
    small = create_model("jdnet-lite", units=1, scales=1).double().set_attention_impl("reference")
    big = deepen(small, 2)
    assert next(big.parameters()).dtype == torch.float64 and big.impl == "reference"
    assert all(m.impl == "reference" for m in big.modules() if hasattr(m, "kernel_size") and hasattr(m, "impl"))


def test_deepen_refuses_fewer_units():
    with pytest.raises(ValueError, match="cannot deepen"):
        deepen(create_model("jdnet-lite", units=3), 2)


def _assert_same_image(small, big):
    assert big.state_dict().keys() == small.state_dict().keys()
    x = torch.rand(2, 3, 17, 23)
    for mode in ("eval", "train"):  # train: BatchNorm on the batch's statistics, the module path
        small.train(mode == "train"), big.train(mode == "train")
        with torch.no_grad():
            rain = small.rain_layer(x)
            assert rain.abs().mean() > 1e-3  # the image depends on the trained weights
            torch.testing.assert_close(big.rain_layer(x), rain, rtol=0, atol=1e-5)
    big.eval().set_attention_impl("reference")
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("extra", [2, 8])
def test_widened_model_computes_the_same_image(name, extra, randomise):
    small = randomise(create_model(name, units=2, scales=2, channels=16))
    big = widen(small, 16 + extra)
    assert big.config.channels == 16 + extra and big.config.mid_planes == (16 + extra) // 4
    _assert_same_image(small, big)


@pytest.mark.parametrize("channels, wider, rel, maps", [(32, 48, (2, 3), 1), (64, 72, (4, 4), 2)])
def test_widening_grows_relation_planes_and_keeps_several_weight_maps(channels, wider, rel, maps, randomise):
    small = randomise(create_model("jdnet-lite", units=1, scales=1, channels=channels))
    big = widen(small, wider)
    assert (small.config.rel_planes, big.config.rel_planes) == rel
    assert small.config.weight_channels == big.config.weight_channels == maps
    _assert_same_image(small, big)


def test_widened_model_keeps_dtype_and_impl(randomise):
    small = randomise(create_model("jdnet-lite", units=1, scales=1)).double().set_attention_impl("reference")
    big = widen(small, 20)
    assert next(big.parameters()).dtype == torch.float64 and big.impl == "reference"
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-12)
    assert next(widen(small.to(torch.bfloat16), 20).parameters()).dtype == torch.bfloat16


def test_widened_channels_learn_through_their_zero_weights(randomise):
    big = widen(randomise(create_model("jdnet-lite", units=2, scales=2)), 24).train()
    assert big.exitBlock[0].weight[:, 16:].abs().max() == 0
    opt = torch.optim.SGD(big.parameters(), lr=0.1)
    x = torch.rand(2, 3, 16, 16)
    for _ in range(2):  # the first step opens the zero weights into trained channels, the second reaches the new
        opt.zero_grad()
        big(x).square().mean().backward()
        opt.step()
    assert big.exitBlock[0].weight[:, 16:].abs().max() > 0
    assert big.derain_net.units[0].res_list[0].res[0].weight.grad[16:].abs().max() > 0


def test_widen_refuses_what_it_cannot_preserve():
    with pytest.raises(ValueError, match="cannot widen"):
        widen(create_model("jdnet-lite", units=1), 8)
    with pytest.raises(ValueError, match="weight maps"):  # 64 channels: 16 value planes share 2 weight maps
        widen(create_model("jdnet-lite", units=1, scales=1), 64)
    with pytest.raises(ValueError, match="attention planes"):
        widen(create_model("jdnet-lite", units=1, scales=1, mid_planes=8, weight_channels=1), 18)
