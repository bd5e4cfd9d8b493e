"""Function-preserving growth of the dense chain."""
import pytest
import torch

from jdnet_plugin.archs.grow import deepen
from jdnet_plugin.registry import create_model


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
