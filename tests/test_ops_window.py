"""The attention operations against direct, loop-based computations of their definitions."""
import pytest
import torch

from jdnet_plugin.ops import (Aggregation, Subtraction, Subtraction2, aggregation, aggregation_unfold, position,
                              shift_aggregate, subtraction, subtraction2)
from jdnet_plugin.ops import native
from jdnet_plugin.ops.window import attention_softmax, shift_aggregate_backward, window_softmax, window_softmax_backward


def _reflect(t: int, n: int) -> int:
    if t < 0:
        return -t
    if t >= n:
        return 2 * (n - 1) - t
    return t


def _offsets(k, h, w):
    p = k // 2
    for y in range(h):
        for x in range(w):
            for q in range(k * k):
                i, j = divmod(q, k)
                yield y, x, q, _reflect(y + i - p, h), _reflect(x + j - p, w)


def direct_subtraction2(x1, x2, k):
    b, c, h, w = x1.shape
    rows = {}
    for y, x, q, yy, xx in _offsets(k, h, w):
        rows[(q, y * w + x)] = x1[:, :, y, x] - x2[:, :, yy, xx]
    return torch.stack([torch.stack([rows[(q, n)] for n in range(h * w)], -1) for q in range(k * k)], 2)


def direct_aggregation(xin, wt, k):
    b, c, h, w = xin.shape
    s = wt.shape[1]
    out = [[None] * w for _ in range(h)]
    for y, x, q, yy, xx in _offsets(k, h, w):
        weight = wt[:, torch.arange(c) % s, q, y * w + x]
        term = weight * xin[:, :, yy, xx]
        out[y][x] = term if out[y][x] is None else out[y][x] + term
    return torch.stack([torch.stack(row, -1) for row in out], -2)


SIZES = [(3, 4, 4), (3, 5, 7), (5, 6, 5), (7, 4, 6), (7, 8, 9)]


@pytest.mark.parametrize("k,h,w", SIZES)
def test_subtraction2_matches_definition_forward_and_grad(k, h, w):
    torch.manual_seed(k * 100 + h * 10 + w)
    x1 = torch.randn(2, 3, h, w, dtype=torch.double, requires_grad=True)
    x2 = torch.randn(2, 3, h, w, dtype=torch.double, requires_grad=True)
    ours, ref = subtraction2(x1, x2, k), direct_subtraction2(x1, x2, k)
    assert ours.shape == (2, 3, k * k, h * w)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad(ours, (x1, x2), g)
    gb = torch.autograd.grad(ref, (x1, x2), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("k,h,w", SIZES[:3])
def test_subtraction_is_self_relation_and_zero_at_centre(k, h, w):
    x = torch.randn(1, 2, h, w, dtype=torch.double)
    out = subtraction(x, k)
    torch.testing.assert_close(out, direct_subtraction2(x, x, k))
    assert out[:, :, (k * k) // 2].abs().max() == 0  # centre offset
    torch.testing.assert_close(Subtraction(k)(x), out)
    torch.testing.assert_close(Subtraction2(k)(x, x), out)


def test_border_reads_by_reflection():
    # Index -1 reads index 1: the top-left neighbour of pixel (0, 0) is pixel (1, 1).
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = subtraction2(torch.zeros_like(x), x, 3)
    assert out[0, 0, 0, 0] == -x[0, 0, 1, 1]
    assert out[0, 0, 8, 15] == -x[0, 0, 2, 2]  # bottom-right neighbour of (3, 3) is (2, 2)


@pytest.mark.parametrize("k,h,w", SIZES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("impl", [aggregation, aggregation_unfold])
def test_aggregation_matches_definition_forward_and_grad(k, h, w, groups, impl):
    torch.manual_seed(k + h + w + groups)
    x = torch.randn(2, 4, h, w, dtype=torch.double, requires_grad=True)
    wt = torch.randn(2, groups, k * k, h * w, dtype=torch.double).softmax(2).requires_grad_()
    ours, ref = impl(x, wt, k), direct_aggregation(x, wt, k)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (x, wt), g), torch.autograd.grad(ref, (x, wt), g)):
        torch.testing.assert_close(a, b)


def test_aggregation_gradcheck():
    x = torch.randn(1, 2, 4, 5, dtype=torch.double, requires_grad=True)
    wt = torch.randn(1, 2, 9, 20, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: aggregation(a, b, 3), (x, wt))


def test_aggregation_module_and_shape_errors():
    x = torch.randn(1, 4, 6, 6)
    wt = torch.rand(1, 1, 9, 36)
    torch.testing.assert_close(Aggregation(3)(x, wt), aggregation(x, wt, 3))
    with pytest.raises(ValueError, match="does not fit"):
        aggregation(x, torch.rand(1, 3, 9, 36), 3)
    with pytest.raises(ValueError, match="too small"):
        subtraction(torch.randn(1, 1, 3, 8), 7)


def test_position_map():
    p = position(3, 5)
    assert p.shape == (1, 2, 3, 5)
    torch.testing.assert_close(p[0, 0, 1], torch.linspace(-1, 1, 5))  # x varies along the width
    torch.testing.assert_close(p[0, 1, :, 2], torch.linspace(-1, 1, 3))  # y along the height


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32: the native kernels where they build
def test_shift_aggregate_is_a_custom_op_with_backward(dtype):
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch (torch.compile), checked by
    # torch.library.opcheck; gradcheck of its backward in float64.
    g = torch.Generator().manual_seed(0)
    xp = torch.randn(2, 2, 3, 9, 10, dtype=dtype, generator=g, requires_grad=True)
    weight = torch.randn(2, 1, 3, 9, 7, 8, dtype=dtype, generator=g, requires_grad=True)
    torch.library.opcheck(shift_aggregate, (xp, weight, 3))
    torch.library.opcheck(shift_aggregate_backward, (xp.detach(), weight.detach(), torch.randn(2, 2, 3, 7, 8,
                                                                                            dtype=dtype), 3))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda a, b: shift_aggregate(a, b, 3), (xp, weight))


def test_compiled_training_step_through_the_aggregation():
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    wt = torch.randn(2, 2, 9, 99).softmax(2).requires_grad_()
    compiled = torch.compile(lambda a, b: aggregation(a, b, 3), backend="aot_eager")
    out = compiled(x, wt)
    grads = torch.autograd.grad(out.square().sum(), (x, wt))
    ref = aggregation_unfold(x, wt, 3)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), (x, wt))):
        torch.testing.assert_close(a, b)


def test_no_second_derivative_through_the_aggregation():
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    wt = torch.randn(1, 1, 9, 30).softmax(2).requires_grad_()
    (gx,) = torch.autograd.grad(aggregation(x, wt, 3).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="shift_aggregate_backward"):
        gx.sum().backward()


def test_torch_export_sees_the_custom_op():
    from jdnet_plugin import create_model
    torch.manual_seed(0)
    m = create_model("jdnet-lite", units=1, scales=1).eval()
    x = torch.rand(1, 3, 16, 20)
    ep = torch.export.export(m, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"jdnet.shift_aggregate.default", "jdnet.window_softmax.default"} <= ops
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x), rtol=0, atol=1e-5)


def direct_attention_softmax(x1, x2, a, pos, k, slope):
    """SAM's attention weights from their definition: the relation of every reflected neighbour, weighted by
    ``a``, plus the position term, then a softmax over the window."""
    rel = torch.nn.functional.leaky_relu(direct_subtraction2(x1, x2, k), slope)  # (B, R, K, H*W)
    logits = torch.einsum("sc,bckn->bskn", a, rel) + pos.flatten(2)
    return logits.softmax(2)


@pytest.mark.parametrize("k,h,w", SIZES[:3])
@pytest.mark.parametrize("r,s", [(1, 1), (2, 3)])
def test_attention_softmax_matches_definition_forward_and_grad(k, h, w, r, s):
    g = torch.Generator().manual_seed(k + h + w + r)
    b = 2
    x1 = torch.randn(b, r, h, w, generator=g, requires_grad=True)
    x2 = torch.randn(b, r, h, w, generator=g, requires_grad=True)
    a = torch.randn(s, r, generator=g, requires_grad=True)
    pos = torch.randn(s, k * k, h, w, generator=g, requires_grad=True)
    got = attention_softmax(x1, x2, a, pos, k, 0.2)
    ref = direct_attention_softmax(x1, x2, a, pos, k, 0.2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn(ref.shape, generator=g)
    for u, v in zip(torch.autograd.grad(got, (x1, x2, a, pos), grad),
                    torch.autograd.grad(ref, (x1, x2, a, pos), grad)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_window_softmax_native_kernels_match_pytorch(monkeypatch):
    """float32 on CPU runs the native kernels where they build; without them (as JDNET_NATIVE=0) PyTorch computes
    the same, forward and backward, at a size with vector and scalar columns and more than one image."""
    if not native.available():
        pytest.skip("no native kernels on this machine")
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(3, 2, 11, 21, generator=g), torch.randn(3, 2, 17, 27, generator=g),
            torch.randn(2, 2, generator=g), torch.randn(2, 49, 11, 21, generator=g)]
    grad = torch.randn(3, 2, 49, 11, 21, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in args]
        out = window_softmax(*leaves, 7, 0.2)
        return out, torch.autograd.grad(out, leaves, grad)

    out, grads = run()
    assert native.window_softmax(*args, 7, 0.2) is not None  # the native forward ran, not the fallback
    monkeypatch.setattr(native, "window_softmax", lambda *a: None)
    monkeypatch.setattr(native, "window_softmax_backward", lambda *a: None)
    ref, ref_grads = run()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for u, v in zip(grads, ref_grads):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32: the native kernels where they build
def test_window_softmax_is_a_custom_op_with_backward(dtype):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(2, 2, 5, 6, dtype=dtype, generator=g, requires_grad=True)
    x2p = torch.randn(2, 2, 7, 8, dtype=dtype, generator=g, requires_grad=True)
    a = torch.randn(3, 2, dtype=dtype, generator=g, requires_grad=True)
    pos = torch.randn(3, 9, 5, 6, dtype=dtype, generator=g, requires_grad=True)
    torch.library.opcheck(window_softmax, (x1, x2p, a, pos, 3, 0.2))
    weight = window_softmax(x1, x2p, a, pos, 3, 0.2).detach()
    torch.library.opcheck(window_softmax_backward, (x1.detach(), x2p.detach(), a.detach(), weight,
                                                    torch.randn(weight.shape, dtype=dtype, generator=g), 3, 0.2))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda *t: window_softmax(*t, 3, 0.2), (x1, x2p, a, pos))


def test_attention_softmax_under_bf16_autocast_trains():
    """Under autocast the embeddings come in bf16 and the folded weights in fp32; forward and backward must
    meet one dtype."""
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(2, 2, 9, 10, generator=g).bfloat16().requires_grad_()
    x2 = torch.randn(2, 2, 9, 10, generator=g).bfloat16().requires_grad_()
    a = torch.randn(1, 2, generator=g, requires_grad=True)
    pos = torch.randn(1, 49, 9, 10, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_softmax(x1, x2, a, pos, 7, 0.2)
    out.float().square().sum().backward()
    ref = direct_attention_softmax(x1.float(), x2.float(), a, pos, 7, 0.2)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-5)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x1, x2, a, pos))


def test_attention_softmax_of_an_empty_batch():
    out = attention_softmax(torch.zeros(0, 1, 5, 6), torch.zeros(0, 1, 5, 6), torch.ones(1, 1),
                            torch.zeros(1, 9, 5, 6), 3, 0.2)
    assert out.shape == (0, 1, 9, 30)


def test_window_softmax_names_mixed_dtypes():
    with pytest.raises(ValueError, match="one dtype"):
        window_softmax(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 6, 6), torch.ones(1, 1, dtype=torch.float64),
                       torch.zeros(1, 9, 4, 4), 3, 0.2)


def test_compiled_training_step_through_the_attention_weights():
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(2, 2, 9, 11, generator=g, requires_grad=True),
            torch.randn(2, 2, 9, 11, generator=g, requires_grad=True),
            torch.randn(1, 2, generator=g, requires_grad=True),
            torch.randn(1, 9, 9, 11, generator=g, requires_grad=True)]
    compiled = torch.compile(lambda *t: attention_softmax(*t, 3, 0.2), backend="aot_eager")
    out = compiled(*args)
    ref = direct_attention_softmax(*args, 3, 0.2)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.square().sum(), args), torch.autograd.grad(ref.square().sum(), args)):
        torch.testing.assert_close(a, b)
