import os
import shutil
import subprocess
import sys

import pytest
import torch

from jdnet_plugin.ops import native
from jdnet_plugin.archs.jdnet_arch import SANBottleneck

has_compiler = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
needs_compiler = pytest.mark.skipif(not has_compiler, reason="no C compiler")


def _bottleneck(c: int, r: int, m: int, s: int, k: int, seed: int = 0) -> SANBottleneck:
    torch.manual_seed(seed)
    san = SANBottleneck(c, r, m, s, k).eval()
    for bn in (san.bn1, san.bn2):  # non-trivial eval statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.3, 0.3)
    return san


def _features(b: int, c: int, h: int, w: int, spaced: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Channels-last features, or (``spaced``) a column block of a wider matrix with a bias to apply."""
    g = torch.Generator().manual_seed(seed)
    if not spaced:
        return torch.randn(b, c, h, w, generator=g).contiguous(memory_format=torch.channels_last), None
    wide = torch.randn(b * h * w, 3 * c, generator=g)
    return wide[:, c:2 * c].view(b, h, w, c).permute(0, 3, 1, 2), torch.randn(c, generator=g)


@needs_compiler
def test_kernel_builds_where_a_compiler_exists():
    assert native.available()
    assert list((native.cache_dir() / "kernels").glob("san-*.so"))


@needs_compiler
@pytest.mark.parametrize("b, c, r, m, s, h, w, k, threads, spaced", [
    (2, 32, 2, 8, 1, 37, 29, 7, 2, False),  # the paper's widths; rows split unevenly
    (1, 32, 2, 8, 1, 9, 50, 7, 2, True),    # a dense fusion's output with its bias
    (1, 16, 1, 4, 1, 20, 31, 7, 1, True),   # jdnet-lite's widths
    (1, 12, 2, 6, 2, 11, 17, 5, 3, False),  # channels not a multiple of 8; two weight maps
    (1, 40, 4, 16, 4, 8, 8, 3, 2, False),   # more than 8 values; four weight maps
    (1, 32, 2, 8, 1, 4, 4, 7, 2, True),     # the smallest image the 7x7 reflection allows
])
def test_native_bottleneck_matches_pytorch(b, c, r, m, s, h, w, k, threads, spaced, monkeypatch):
    san = _bottleneck(c, r, m, s, k)
    x, bias = _features(b, c, h, w, spaced)
    x_before = x.clone()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast = san.forward_fused(x, bias, 2048)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # the input is left alone
    monkeypatch.setitem(native._state, "lib", None)
    with torch.no_grad():
        ref = san.forward_fused(x, bias, 2048)  # the op's PyTorch implementation
        module = san(x if bias is None else torch.nn.functional.leaky_relu(x + bias.view(-1, 1, 1), 0.2))
    assert fast.shape == (b, c, h, w) and fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # so does the PyTorch implementation
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(fast, module, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kernel", ["native", "pytorch"])
def test_san_bottleneck_is_a_custom_op(kernel, monkeypatch):
    # Schema, fake (meta) implementation and dispatch, checked by torch.library.opcheck.
    if kernel == "pytorch":
        monkeypatch.setitem(native._state, "lib", None)
    elif not native.available():
        pytest.skip("native kernels unavailable")
    calls = []
    call = native.san_bottleneck
    monkeypatch.setattr(native, "san_bottleneck", lambda *a: calls.append(call(*a)) or calls[-1])
    from jdnet_plugin.ops.fused import position_conv, san_bottleneck
    san = _bottleneck(12, 2, 6, 2, 5)
    x, bias = _features(2, 12, 7, 9, True)
    from jdnet_plugin.ops.fused import bn_affine
    args = (x, bias, *bn_affine(san.bn1), *san.sam.projections(), position_conv(san.sam.conv_p, 7, 9),
            san.sam.folded_weights()[0], *bn_affine(san.bn2), san.conv.weight.flatten(1), san.conv.bias, 5, 2048)
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(san_bottleneck, args)
    assert any(calls) == (kernel == "native")  # the native kernel ran, or PyTorch did


def test_batch_statistics_and_other_dtypes_take_pytorch(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "san_bottleneck", lambda *a, **k: calls.append(1) or False)
    san = _bottleneck(32, 2, 8, 1, 7)
    x, _ = _features(1, 32, 9, 9, False)
    with torch.no_grad():
        san.double().forward_fused(x.double())
        san.float().train().forward_fused(x)
    assert calls == []  # declined before the native call: no eval statistics, or not fp32


def _args(h: int = 4):
    """Arguments of ``native.san_bottleneck`` after ``x, in_bias`` for C 8, R 1, M 2, S 1, k 3."""
    return ((torch.ones(8), torch.zeros(8)), (torch.zeros(4, 8), torch.zeros(4)), torch.zeros(1, 2, h, 4),
            torch.zeros(1, 3), (torch.ones(2), torch.zeros(2)), (torch.zeros(8, 2), torch.zeros(8)), 3, 0.2)


def test_unsuitable_tensors_are_declined():
    x = torch.zeros(1, 4, 4, 8)
    assert not native.san_bottleneck(x.double(), None, *_args(), x.double())
    assert not native.san_bottleneck(x.transpose(1, 2), None, *_args(), x)  # pixels not in row order
    assert not native.san_bottleneck(x, None, *_args(), x.transpose(1, 2))  # output not contiguous


@needs_compiler
def test_inconsistent_shapes_are_an_error():
    x = torch.zeros(1, 4, 4, 8)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        native.san_bottleneck(x, None, *_args(h=5), x.clone())  # a position map of another height


@needs_compiler
def test_loading_the_kernels_leaves_denormals_alone(tmp_path):
    # A library linked with -ffast-math by GCC carries crtfastmath.o, which turns on flush-to-zero for the
    # whole process as it loads.
    code = ("import torch; from jdnet_plugin.ops import native; assert native.available(); "
            "print(1e-310 * 1.0 != 0.0, (torch.tensor([1e-39]) * 1.0).item() != 0.0)")
    env = dict(os.environ, JDNET_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]


def test_disabled_by_environment(tmp_path):
    code = "from jdnet_plugin.ops import native; print(native.available())"
    env = dict(os.environ, JDNET_NATIVE="0", JDNET_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert not (tmp_path / "kernels").exists()


def test_a_failing_compiler_falls_back_with_a_warning(tmp_path):
    code = "from jdnet_plugin.ops import native; print(native.available())"
    env = dict(os.environ, CC="false", JDNET_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert "building the native kernels failed" in done.stderr
    assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written library left behind


@needs_compiler
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_child_runs_the_kernel():
    # A DataLoader worker is a forked child of a process whose threads (OpenMP's or the fallback pool's)
    # it does not have; like PyTorch's own OpenMP kernels, the kernel runs there once the worker has set
    # one thread, as DataLoader workers do.
    import multiprocessing as mp
    san = _bottleneck(32, 2, 8, 1, 7)
    x, bias = _features(1, 32, 12, 12, True)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = _bottleneck_in(san, x, bias)  # the parent's threads exist now
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_bottleneck_in, (san, x, bias, 1)).get(timeout=60)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(got, expected)


def _bottleneck_in(san, x, bias, threads=None):
    if threads:
        torch.set_num_threads(threads)
    assert native.available()
    with torch.no_grad():
        return san.forward_fused(x, bias, 2048)


@needs_compiler
def test_a_build_without_openmp_splits_rows_over_a_pool(monkeypatch):
    monkeypatch.setattr(native, "_OPTIONAL_FLAGS", ([],))
    monkeypatch.setattr(native, "_state", {})
    assert native.available() and not native._library().jdnet_openmp()
    san = _bottleneck(16, 1, 4, 1, 7)
    x, bias = _features(2, 16, 23, 19, True)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            fast = san.forward_fused(x, bias, 2048)
    finally:
        torch.set_num_threads(old)
    assert native._state["threads"] == 2  # the pool ran the rows
    monkeypatch.setitem(native._state, "lib", None)
    with torch.no_grad():
        torch.testing.assert_close(fast, san.forward_fused(x, bias, 2048), rtol=0, atol=2e-5)


@needs_compiler
@pytest.mark.parametrize("b, cins, cout, h, w, act, with_pre, with_post, spaced", [
    (1, [16, 16], 32, 9, 13, (0.2), True, False, True),  # the self-calibrated bottleneck's end
    (2, [32], 32, 8, 10, (0.2), True, True, False),      # the scale-aggregation fusion's end
    (1, [5, 7], 12, 5, 7, None, False, True, False),     # channels not a multiple of 8
    (1, [3], 40, 6, 5, 0.1, True, False, True),          # more than 32 output channels, odd width
])
def test_pointwise_stage_matches_pytorch(b, cins, cout, h, w, act, with_pre, with_post, spaced):
    if not native.available() or not native._library().jdnet_openmp():
        pytest.skip("the native pointwise convolution needs OpenMP")
    g = torch.Generator().manual_seed(h * w + cout)
    inputs = [torch.randn(b, h, w, c, generator=g) for c in cins]
    weight, bias = torch.randn(cout, sum(cins), generator=g), torch.randn(cout, generator=g)
    expected = torch.einsum("bhwi,oi->bhwo", torch.cat(inputs, 3), weight) + bias
    pre = post = None
    if with_pre:
        src = torch.randn(b, h // 2 + 1, w // 2 + 1, cout, generator=g)
        iy, ix = torch.arange(h) // 2, torch.randint(0, w // 2 + 1, (w,), generator=g)
        pre = (src, iy, ix)
        expected = expected + src[:, iy][:, :, ix]
    if act is not None:
        expected = torch.nn.functional.leaky_relu(expected, act)
    if with_post:
        post = torch.randn(b, h, w, cout, generator=g)
        expected = expected + post
    wide = torch.full((b, h, w, 3 * cout), float("nan"))
    out = wide[..., cout:2 * cout] if spaced else torch.empty(b, h, w, cout)
    assert native.pointwise(native.Pointwise(inputs, weight, bias, out, pre=pre, lrelu=act, post=post, stream=spaced))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    if spaced:  # only its columns were written
        assert wide[..., :cout].isnan().all() and wide[..., 2 * cout:].isnan().all()


@needs_compiler
def test_pointwise_rejects_indices_outside_the_image():
    if not native.available() or not native._library().jdnet_openmp():
        pytest.skip("the native pointwise convolution needs OpenMP")
    x, out = torch.zeros(1, 4, 4, 8), torch.zeros(1, 4, 4, 8)
    with pytest.raises(ValueError, match="outside"):
        native.pointwise(native.Pointwise([x], torch.zeros(8, 8), None, out, pre=(
            torch.zeros(1, 2, 2, 8), torch.tensor([0, 0, 1, 2]), torch.arange(4) // 2)))


def test_pointwise_declines_other_dtypes_and_layouts():
    x = torch.zeros(1, 4, 4, 8)
    assert not native.pointwise(native.Pointwise([x.double()], torch.zeros(8, 8).double(), None, x.double()))
    assert not native.pointwise(native.Pointwise([x.transpose(1, 2)], torch.zeros(8, 8), None, x))


@needs_compiler
@pytest.mark.parametrize("b, g, s, h, w, k, threads", [
    (2, 4, 1, 9, 13, 7, 2),   # jdnet-lite's aggregation: four channels, one weight map
    (1, 2, 3, 5, 8, 3, 1),    # three weight maps, one thread
    (3, 1, 2, 4, 4, 7, 3),    # the smallest image the 7x7 reflection allows
])
def test_native_aggregation_and_its_gradients_match_pytorch(b, g, s, h, w, k, threads, monkeypatch):
    from jdnet_plugin.ops.window import shift_aggregate
    gen = torch.Generator().manual_seed(0)
    xp = torch.randn(b, g, s, h + k - 1, w + k - 1, generator=gen, requires_grad=True)
    weight = torch.randn(b, 1, s, k * k, h, w, generator=gen).softmax(3).requires_grad_()
    grad = torch.randn(b, g, s, h, w, generator=gen)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert native.shift_aggregate(xp.detach(), weight.detach(), k) is not None  # the kernel runs
        out = shift_aggregate(xp, weight, k)
        grads = torch.autograd.grad(out, (xp, weight), grad)
        native_grads = native.shift_aggregate_backward(xp.detach(), weight.detach(), grad, k)
    finally:
        torch.set_num_threads(old)
    monkeypatch.setitem(native._state, "lib", None)
    ref = shift_aggregate(xp, weight, k)
    ref_grads = torch.autograd.grad(ref, (xp, weight), grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(native_grads, grads))  # autograd ran the native backward


def test_native_aggregation_declines_other_dtypes_and_rejects_bad_shapes():
    xp, weight = torch.zeros(1, 2, 1, 10, 10), torch.zeros(1, 1, 1, 9, 8, 8)
    assert native.shift_aggregate(xp.double(), weight.double(), 3) is None
    assert native.shift_aggregate(xp.transpose(3, 4), weight, 3) is None  # not contiguous
    if native.available():
        with pytest.raises(ValueError, match="inconsistent shapes"):
            native.shift_aggregate(xp, weight, 5)


def test_the_interface_version_is_checked(tmp_path, monkeypatch):
    lib = native._library()
    if lib is None:
        pytest.skip("native kernels unavailable")
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    with pytest.raises(OSError, match="interface"):
        native._check_abi(lib, tmp_path / "san.so")
