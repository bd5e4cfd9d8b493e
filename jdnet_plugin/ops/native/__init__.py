"""Optional native CPU kernels, compiled on first use with the system's C compiler.

SAN's authors compiled their attention kernels at run time (CuPy); StyleGAN's custom ops do the same
with a fallback. Here the kernels (``san.c``: the SAN bottleneck with its attention, a 1x1 convolution
with what follows it, the attention's weights (relation and softmax) and its aggregation, each with a
backward) are plain C (no Python or
PyTorch headers, about a second to build), cached under ``$JDNET_CACHE_DIR`` (default
``~/.cache/jdnet_plugin``), called through ``ctypes`` behind a checked interface (:data:`ABI_VERSION`).
They split their work over PyTorch's own OpenMP threads where the compiler has OpenMP (the SAN kernel
otherwise over a small thread pool here; the others then leave the work to PyTorch). Where no compiler
is found, the build fails, or ``JDNET_NATIVE=0``, :func:`san_bottleneck` and :func:`pointwise` return
False, the training kernels (:func:`shift_aggregate`, :func:`window_softmax` and their backwards) None, and
callers use PyTorch.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["available", "san_bottleneck", "Pointwise", "pointwise", "shift_aggregate", "shift_aggregate_backward",
           "window_softmax", "window_softmax_backward", "cache_dir", "ABI_VERSION"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("san.c")
# No -ffast-math: linking with it makes GCC add crtfastmath.o, whose constructor turns on flush-to-zero for the
# whole process when the library loads (the kernels' hot loops are explicit vector code and do not need it).
_FLAGS = ["-O3", "-fno-math-errno", "-fPIC", "-shared"]
# Tried in order: OpenMP (the kernels then run on PyTorch's own thread team) and this CPU's vector units;
# without either where the compiler or its runtime lacks them.
_OPTIONAL_FLAGS = (["-fopenmp", "-march=native"], ["-fopenmp"], ["-march=native"], [])
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$JDNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/jdnet_plugin``."""
    if os.environ.get("JDNET_CACHE_DIR"):
        return Path(os.environ["JDNET_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jdnet_plugin"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, flags: list[str], target: Path) -> str | None:
    """Build ``target`` atomically; None on success, else the compiler's complaint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *flags, "-o", tmp, str(_SOURCE), "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return f"{' '.join(cmd)}\n{done.stderr[-2000:]}"
        os.replace(tmp, target)  # atomic: a concurrent build or a reader never sees half a file
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{' '.join(cmd)}: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.warning("jdnet_plugin: no C compiler found; the attention runs in PyTorch (slower). "
                    "Install one (gcc, clang) or set JDNET_NATIVE=0 to silence this.")
        return None
    errors = []
    build_inputs = [_SOURCE.read_bytes(), compiler.encode(), _cpu_flags().encode(), platform.machine().encode()]
    for flags in ([*_FLAGS, *extra] for extra in _OPTIONAL_FLAGS):
        key = hashlib.sha256(b"\0".join([*build_inputs, " ".join(flags).encode()])).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"san-{key}.so"
        error = None if target.exists() else _compile(compiler, flags, target)
        if error is None:
            lib = ctypes.CDLL(str(target))
            _check_abi(lib, target)
            ptr, i32 = ctypes.c_void_p, ctypes.c_int
            lib.jdnet_san.argtypes = [ptr, ctypes.c_int64] + [ptr] * 12 + [i32] * 7 + [ctypes.c_float] + [i32] * 4
            lib.jdnet_pointwise.argtypes = [i32, i32, ctypes.POINTER(_PointwiseArgs), i32]
            lib.jdnet_shift_aggregate.argtypes = [ptr] * 3 + [i32] * 7
            lib.jdnet_shift_aggregate_backward.argtypes = [ptr] * 5 + [i32] * 7
            lib.jdnet_window_softmax.argtypes = [ptr] * 5 + [i32] * 6 + [ctypes.c_float, i32]
            lib.jdnet_window_softmax_backward.argtypes = [ptr] * 9 + [i32] * 6 + [ctypes.c_float, i32]
            for fn in (lib.jdnet_san, lib.jdnet_pointwise, lib.jdnet_openmp, lib.jdnet_abi_version,
                       lib.jdnet_pw_args_size, lib.jdnet_shift_aggregate, lib.jdnet_shift_aggregate_backward,
                       lib.jdnet_window_softmax, lib.jdnet_window_softmax_backward):
                fn.restype = i32
            return lib
        errors.append(error)
    log.warning("jdnet_plugin: building the native kernels failed; the attention runs in PyTorch "
                "(slower). Set JDNET_NATIVE=0 to silence this.\n%s", "\n".join(errors))
    return None


# The interface this module calls: JDNET_ABI_VERSION in san.c (argument lists of its functions, the layout of
# pw_args).
ABI_VERSION = 4


def _check_abi(lib: ctypes.CDLL, path: Path) -> None:
    """Refuse a library whose interface is not the one the ``argtypes`` above describe."""
    try:
        lib.jdnet_abi_version.restype = lib.jdnet_pw_args_size.restype = ctypes.c_int
        version, size = lib.jdnet_abi_version(), lib.jdnet_pw_args_size()
    except AttributeError as exc:
        raise OSError(f"{path} has no interface version (an older build?)") from exc
    if version != ABI_VERSION or size != ctypes.sizeof(_PointwiseArgs):
        raise OSError(f"{path} has interface {version} with a {size}-byte pw_args; this module calls interface "
                      f"{ABI_VERSION} with {ctypes.sizeof(_PointwiseArgs)} bytes")


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            lib = None
            if os.environ.get("JDNET_NATIVE", "1") != "0":
                try:
                    lib = _build()
                except (OSError, AttributeError) as exc:  # a cached file that does not load or lacks a symbol
                    log.warning("jdnet_plugin: native kernels unusable (%s); using PyTorch", exc)
            _state["lib"] = lib
        return _state["lib"]


def available() -> bool:
    """Whether the native kernels are built and loaded (building them on the first call)."""
    return _library() is not None


def _forget_pool_in_child() -> None:
    # A forked child (a DataLoader worker) has the parent's pool object but none of its threads.
    global _lock
    _lock = threading.Lock()
    _state.pop("pool", None)
    _state.pop("threads", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _pool(threads: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _state.get("pool")
        if pool is None or _state.get("threads") != threads:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(threads, thread_name_prefix="jdnet-native")
            _state["pool"], _state["threads"] = pool, threads
        return pool


def _run_rows(kernel, batch: int, height: int, name: str) -> None:
    """``kernel(image, y0, y1, chunk, threads)`` over all images and ranges of rows on
    ``torch.get_num_threads()`` threads: the kernel's own OpenMP loop where it has one, else a thread pool
    here."""
    threads = max(1, torch.get_num_threads())
    rows = max(1, -(-height // (2 * threads)))  # two ranges per thread per image: some balance, little overhead
    if _library().jdnet_openmp():
        codes = [kernel(i, 0, height, rows, threads) for i in range(batch)]
    else:
        jobs = [(i, y0, min(height, y0 + rows), rows, 1) for i in range(batch) for y0 in range(0, height, rows)]
        if threads == 1 or len(jobs) == 1:
            codes = [kernel(*job) for job in jobs]
        else:
            codes = list(_pool(threads).map(lambda job: kernel(*job), jobs))
    if any(codes):
        raise MemoryError(f"{name}: the native kernel could not allocate its scratch rows")


def _cpu_fp32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _pixels_ld(t: torch.Tensor) -> int | None:
    """The pixel stride of a ``(B, H, W, C)`` view whose channels are contiguous and pixels evenly spaced in
    row order, else None."""
    b, h, w, c = t.shape
    ld = t.stride(2)
    ok = t.stride(3) == 1 or c == 1
    return ld if ok and t.stride(1) == w * ld and (b == 1 or t.stride(0) == h * w * ld) else None


def san_bottleneck(x: torch.Tensor, in_bias: torch.Tensor | None, bn1: tuple[torch.Tensor, torch.Tensor],
                   proj: tuple[torch.Tensor, torch.Tensor], pos: torch.Tensor, weight: torch.Tensor,
                   bn2: tuple[torch.Tensor, torch.Tensor], conv: tuple[torch.Tensor, torch.Tensor],
                   kernel_size: int, slope: float, out: torch.Tensor) -> bool:
    """The SAN bottleneck ``conv(lrelu(bn2(sam(lrelu(bn1(x)))))) + x`` into ``out`` ``(B, H, W, C)``
    (channels-last storage), or False when the native kernels are not available or the tensors do not
    suit them.

    ``x``: ``(B, H, W, C)`` whose pixels may be spaced (a column block of a wider matrix); with
    ``in_bias`` ``(C,)`` the input is ``lrelu(x + in_bias)``. ``bn1``, ``bn2``: eval BatchNorms as
    (scale, shift); ``proj``: ``conv1, conv2, conv3`` stacked, ``(2R + M, C)`` and bias; ``pos``:
    ``(1, 2, H, W)`` after ``conv_p``; ``weight``: ``(S, R + 2)`` ``conv_w`` folded; ``conv``: the last
    1x1 as ``(C, M)`` weight and ``(C,)`` bias."""
    b, h, w, c = x.shape
    ldx = _pixels_ld(x)
    (s1, t1), (wp, bp), (s2, t2), (wo, bo) = bn1, proj, bn2, conv
    wo = wo.t().contiguous()
    params = [s1, t1, wp, bp, pos, weight, s2, t2, wo, bo] + ([in_bias] if in_bias is not None else [])
    if ldx is None or not (_cpu_fp32(x, out, *params) and all(t.is_contiguous() for t in (out, *params))):
        return False
    lib = _library()
    if lib is None:
        return False
    m, s, r = wo.shape[0], weight.shape[0], (wp.shape[0] - wo.shape[0]) // 2
    if (wp.shape != (2 * r + m, c) or weight.shape != (s, r + 2) or pos.shape != (1, 2, h, w)
            or out.shape != (b, h, w, c) or m % s or wo.shape != (m, c)):
        raise ValueError("san_bottleneck: inconsistent shapes "
                         f"{[tuple(t.shape) for t in (x, wp, pos, weight, wo, out)]}")
    bias_ptr = in_bias.data_ptr() if in_bias is not None else None

    def rows(i: int, y0: int, y1: int, chunk: int, threads: int) -> int:
        return lib.jdnet_san(x[i].data_ptr(), ldx, bias_ptr, s1.data_ptr(), t1.data_ptr(), wp.data_ptr(),
                             bp.data_ptr(), pos.data_ptr(), weight.data_ptr(), s2.data_ptr(), t2.data_ptr(),
                             wo.data_ptr(), bo.data_ptr(), out[i].data_ptr(),
                             c, r, m, s, h, w, kernel_size, slope, y0, y1, chunk, threads)

    _run_rows(rows, b, h, "san_bottleneck")
    return True


@dataclass
class Pointwise:
    """A 1x1 convolution for :func:`pointwise`: ``out = post + act(cat(inputs) @ weight.T + bias + pre)``.

    ``inputs``, ``post``, ``out``: ``(B, H, W, C)`` views with contiguous channels (pixels may be spaced:
    column blocks of a wider matrix); ``weight``: ``(Cout, sum of the inputs' C)``; ``pre``: ``(src, iy,
    ix)``, added as ``src[:, iy][:, :, ix]`` (``src`` ``(B, h, w, Cout)``: nearest upsampling, or the
    identity); ``lrelu``: the LeakyReLU slope, None for no activation; ``stream``: write ``out`` around the
    caches (an output not read again soon, such as a column of the dense buffer; not ``pre`` or ``post``)."""

    inputs: list[torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None
    out: torch.Tensor
    pre: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    lrelu: float | None = None
    post: torch.Tensor | None = None
    stream: bool = False


class _PointwiseArgs(ctypes.Structure):  # pw_args in san.c
    _fields_ = [("n_in", ctypes.c_int), ("in_", ctypes.c_void_p), ("in_ld", ctypes.c_void_p),
                ("in_c", ctypes.c_void_p), ("wt", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("cout", ctypes.c_int), ("cp", ctypes.c_int), ("pre", ctypes.c_void_p), ("pre_ld", ctypes.c_int64),
                ("pre_w", ctypes.c_int), ("iy", ctypes.c_void_p), ("ix", ctypes.c_void_p),
                ("lrelu_on", ctypes.c_int), ("slope", ctypes.c_float), ("post", ctypes.c_void_p),
                ("post_ld", ctypes.c_int64), ("out", ctypes.c_void_p), ("out_ld", ctypes.c_int64),
                ("stream", ctypes.c_int)]


def _prepare(st: Pointwise) -> dict | None:
    """The convolution's padded weight, strides and indices; None where its tensors do not suit the kernel."""
    views = [*st.inputs, st.out] + ([st.post] if st.post is not None else []) + \
        ([st.pre[0]] if st.pre is not None else [])
    if not _cpu_fp32(*views, st.weight, *([st.bias] if st.bias is not None else [])):
        return None
    lds = [_pixels_ld(t) for t in views]
    if None in lds:
        return None
    b, h, w, cout = st.out.shape
    cin = [t.shape[3] for t in st.inputs]
    if (st.weight.shape != (cout, sum(cin))
            or any(t.shape[:3] != (b, h, w) for t in st.inputs)
            or (st.post is not None and st.post.shape != st.out.shape)
            or (st.pre is not None and (st.pre[0].shape[::3] != (b, cout) or st.pre[1].shape != (h,)
                                        or st.pre[2].shape != (w,)))):
        raise ValueError("pointwise: inconsistent shapes "
                         f"{[tuple(t.shape) for t in [*st.inputs, st.weight, st.out]]}")
    cp = -(-cout // 8) * 8
    wt = torch.zeros(sum(cin), cp)
    wt[:, :cout] = st.weight.t()
    bias = torch.zeros(cp)
    if st.bias is not None:
        bias[:cout] = st.bias
    prep = {"wt": wt, "bias": bias, "cp": cp, "cin": cin, "in_ld": lds[:len(cin)], "out_ld": lds[len(cin)],
            "post_ld": lds[len(cin) + 1] if st.post is not None else 0}
    if st.pre is not None:
        iy, ix = st.pre[1].long().contiguous(), st.pre[2].long().contiguous()
        if iy.min() < 0 or iy.max() >= st.pre[0].shape[1] or ix.min() < 0 or ix.max() >= st.pre[0].shape[2]:
            raise ValueError("pointwise: pre's indices fall outside its image")
        prep.update(iy=iy, ix=ix, pre_ld=lds[-1])
    return prep


def pointwise(conv: Pointwise) -> bool:
    """Run ``conv`` (see ``jdnet_pointwise`` in ``san.c``), or return False when the native kernels are not
    available (or built without OpenMP: one thread would lose to PyTorch's convolutions) or the tensors
    do not suit them; nothing is written then."""
    lib = _library()
    if lib is None or not lib.jdnet_openmp():
        return False
    prep = _prepare(conv)
    if prep is None:
        return False
    b, h, w, cout = conv.out.shape
    n = len(conv.inputs)
    in_ld, in_c = (ctypes.c_int64 * n)(*prep["in_ld"]), (ctypes.c_int * n)(*prep["cin"])
    threads = max(1, torch.get_num_threads())
    for i in range(b):
        ptrs = (ctypes.c_void_p * n)(*[t[i].data_ptr() for t in conv.inputs])
        st = _PointwiseArgs(n_in=n, in_=ctypes.addressof(ptrs), in_ld=ctypes.addressof(in_ld),
                            in_c=ctypes.addressof(in_c), wt=prep["wt"].data_ptr(), bias=prep["bias"].data_ptr(),
                            cout=cout, cp=prep["cp"], lrelu_on=conv.lrelu is not None, slope=conv.lrelu or 0.0,
                            out=conv.out[i].data_ptr(), out_ld=prep["out_ld"], stream=conv.stream)
        if conv.pre is not None:
            st.pre, st.pre_ld, st.pre_w = conv.pre[0][i].data_ptr(), prep["pre_ld"], conv.pre[0].shape[2]
            st.iy, st.ix = prep["iy"].data_ptr(), prep["ix"].data_ptr()
        if conv.post is not None:
            st.post, st.post_ld = conv.post[i].data_ptr(), prep["post_ld"]
        lib.jdnet_pointwise(h, w, ctypes.byref(st), threads)
    return True


def _aggregate_shapes(xp: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> tuple[int, ...] | None:
    """``(B, G, S, H, W)`` where ``xp`` ``(B, G, S, H + k - 1, W + k - 1)`` and ``weight`` ``(B, 1, S, k*k, H, W)``
    suit the aggregation kernels (contiguous CPU float32), else None."""
    if not (_cpu_fp32(xp, weight) and xp.is_contiguous() and weight.is_contiguous()):
        return None
    b, g, s, hp, wp = xp.shape
    h, w = weight.shape[-2:]
    if weight.shape != (b, 1, s, kernel_size * kernel_size, h, w) or (hp, wp) != (h + kernel_size - 1,
                                                                                     w + kernel_size - 1):
        raise ValueError(f"shift_aggregate: inconsistent shapes {tuple(xp.shape)}, {tuple(weight.shape)}, "
                         f"kernel_size {kernel_size}")
    return b, g, s, h, w


def _aggregate_library(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels for the aggregation of these tensors: CPU float32 only, and only where they run on all of
    PyTorch's threads (OpenMP) or PyTorch has one (else PyTorch's own parallel kernels win)."""
    if not _cpu_fp32(*tensors):
        return None
    lib = _library()
    return lib if lib is not None and (lib.jdnet_openmp() or torch.get_num_threads() == 1) else None


def shift_aggregate(xp: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor | None:
    """``jdnet::shift_aggregate`` (:func:`jdnet_plugin.ops.window.shift_aggregate`) by the native kernel, or None
    where the kernels are not available or the tensors do not suit them."""
    lib = _aggregate_library(xp, weight)
    dims = _aggregate_shapes(xp, weight, kernel_size) if lib is not None else None
    if dims is None:
        return None
    out = xp.new_empty(dims)
    lib.jdnet_shift_aggregate(xp.data_ptr(), weight.data_ptr(), out.data_ptr(), *dims, kernel_size,
                              max(1, torch.get_num_threads()))
    return out


def shift_aggregate_backward(xp: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                             kernel_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gradients of :func:`shift_aggregate` with respect to ``xp`` and ``weight``, or None where the native
    kernels do not run."""
    lib = _aggregate_library(xp, weight, grad_out)
    dims = _aggregate_shapes(xp, weight, kernel_size) if lib is not None else None
    if dims is None:
        return None
    grad_out = grad_out.contiguous()
    grad_xp, grad_w = torch.empty_like(xp), torch.empty_like(weight)
    lib.jdnet_shift_aggregate_backward(xp.data_ptr(), weight.data_ptr(), grad_out.data_ptr(), grad_xp.data_ptr(),
                                       grad_w.data_ptr(), *dims, kernel_size, max(1, torch.get_num_threads()))
    return grad_xp, grad_w


def _window_shapes(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, pos_shape: torch.Size,
                   kernel_size: int) -> tuple[int, ...]:
    """``(B, R, S, H, W)`` of :func:`window_softmax`'s tensors (``pos_shape``: ``(S, K, H, W)``); a clear error
    where they do not fit together."""
    b, r, h, w = x1.shape
    s = a.shape[0]
    if (x2p.shape != (b, r, h + kernel_size - 1, w + kernel_size - 1) or a.shape != (s, r)
            or tuple(pos_shape) != (s, kernel_size * kernel_size, h, w)):
        raise ValueError(f"window_softmax: inconsistent shapes {tuple(x1.shape)}, {tuple(x2p.shape)}, "
                         f"{tuple(a.shape)}, {tuple(pos_shape)}, kernel_size {kernel_size}")
    return b, r, s, h, w


def window_softmax(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, pos: torch.Tensor, kernel_size: int,
                   slope: float) -> torch.Tensor | None:
    """``jdnet::window_softmax`` (:func:`jdnet_plugin.ops.window.window_softmax`) by the native kernel, or None
    where the kernels are not available or the tensors do not suit them."""
    lib = _aggregate_library(x1, x2p, a, pos)
    if lib is None or not all(t.is_contiguous() for t in (x1, x2p, a, pos)):
        return None
    dims = _window_shapes(x1, x2p, a, pos.shape, kernel_size)
    b, r, s, h, w = dims
    out = x1.new_empty(b, s, kernel_size * kernel_size, h, w)
    if lib.jdnet_window_softmax(x1.data_ptr(), x2p.data_ptr(), a.data_ptr(), pos.data_ptr(), out.data_ptr(), *dims,
                                kernel_size, slope, max(1, torch.get_num_threads())):
        raise MemoryError("window_softmax: the native kernel could not allocate its row buffers")
    return out


def window_softmax_backward(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, weight: torch.Tensor,
                            grad: torch.Tensor, kernel_size: int,
                            slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Gradients of :func:`window_softmax` (of its output ``weight``) with respect to ``x1``, ``x2p``, ``a`` and
    ``pos`` (the logits' gradient summed over the batch), or None where the native kernels do not run."""
    lib = _aggregate_library(x1, x2p, a, weight, grad)
    if lib is None or not all(t.is_contiguous() for t in (x1, x2p, a, weight)):
        return None
    grad = grad.contiguous()
    dims = _window_shapes(x1, x2p, a, weight.shape[1:], kernel_size)
    b, r, s, h, w = dims
    grad_logits, grad_x1, grad_x2p = torch.empty_like(weight), torch.empty_like(x1), torch.empty_like(x2p)
    grad_a = a.new_empty(b, s, r)
    if lib.jdnet_window_softmax_backward(x1.data_ptr(), x2p.data_ptr(), a.data_ptr(), weight.data_ptr(),
                                         grad.data_ptr(), grad_logits.data_ptr(), grad_x1.data_ptr(),
                                         grad_x2p.data_ptr(), grad_a.data_ptr(), *dims, kernel_size, slope,
                                         max(1, torch.get_num_threads())):
        raise MemoryError("window_softmax_backward: the native kernel could not allocate its row buffers")
    return grad_x1, grad_x2p, grad_a.sum(0), grad_logits.sum(0)
