import os
import shutil
import subprocess
import sys

import pytest
import torch

from jdnet_plugin.archs import native
from jdnet_plugin.archs.fast_forward import sam_attention_banded

has_compiler = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
def test_kernel_builds_where_a_compiler_exists():
    assert native.available()
    assert list((native.cache_dir() / "kernels").glob("sam_attention-*.so"))


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
@pytest.mark.parametrize("b, r, m, s, h, w, k, threads", [
    (2, 2, 8, 1, 37, 29, 7, 2), (1, 2, 8, 2, 9, 13, 7, 1), (1, 4, 16, 4, 20, 31, 5, 3), (1, 2, 4, 1, 4, 4, 7, 2),
])
def test_native_attention_matches_pytorch(b, r, m, s, h, w, k, threads, monkeypatch):
    g = torch.Generator().manual_seed(h * w)
    x1, x2 = torch.randn(b, r, h, w, generator=g), torch.randn(b, r, h, w, generator=g)
    x3, pos = torch.randn(b, m, h, w, generator=g), torch.randn(1, 2, h, w, generator=g)
    wt, bias = torch.randn(s, r + 2, generator=g), torch.randn(s, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = sam_attention_banded(x1, x2, x3, pos, wt, bias, k)
    finally:
        torch.set_num_threads(old)
    monkeypatch.setitem(native._state, "lib", None)
    ref = sam_attention_banded(x1, x2, x3, pos, wt, bias, k)
    assert fast.shape == (b, m, h, w)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_other_dtypes_and_layouts_are_declined():
    q = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    assert not native.sam_attention(q, q, q, torch.zeros(1, 4, dtype=torch.float64), 3, 0.2, q)
    q32 = torch.zeros(1, 4, 8, 8).transpose(2, 3)
    assert not native.sam_attention(q32, q32, q32, torch.zeros(1, 4), 3, 0.2, q32)


@pytest.mark.skipif(not has_compiler, reason="no C compiler")
def test_inconsistent_shapes_are_an_error():
    q1, q2p, vp = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 10, 10), torch.zeros(1, 8, 10, 10)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        native.sam_attention(q1, q2p, vp, torch.zeros(3, 4), 3, 0.2, torch.zeros(1, 8, 8, 8))


def test_disabled_by_environment(tmp_path):
    code = "from jdnet_plugin.archs import native; print(native.available())"
    env = dict(os.environ, JDNET_NATIVE="0", JDNET_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert not (tmp_path / "kernels").exists()


def test_a_failing_compiler_falls_back_with_a_warning(tmp_path):
    code = "from jdnet_plugin.archs import native; print(native.available())"
    env = dict(os.environ, CC="false", JDNET_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert "building the native attention kernel failed" in done.stderr
    assert not list((tmp_path / "kernels").glob("*.so"))  # no half-written library left behind


@pytest.mark.skipif(not has_compiler or not hasattr(os, "fork"), reason="no C compiler or no fork")
def test_forked_child_gets_its_own_thread_pool():
    import multiprocessing as mp
    g = torch.Generator().manual_seed(0)
    q1, q2p, vp = torch.randn(1, 4, 12, 12, generator=g), torch.randn(1, 4, 18, 18, generator=g), \
        torch.randn(1, 8, 18, 18, generator=g)
    wt = torch.randn(1, 4, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = _native_in(q1, q2p, vp, wt)  # the parent's two-thread pool exists now
        with mp.get_context("fork").Pool(1) as pool:  # would hang on the parent's pool, whose threads it lacks
            got = pool.apply_async(_native_in, (q1, q2p, vp, wt)).get(timeout=20)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(got, expected)


def _native_in(q1, q2p, vp, wt):
    out = torch.empty(1, 8, 12, 12)
    assert native.sam_attention(q1, q2p, vp, wt, 7, 0.2, out) and native._state["threads"] == 2
    return out
