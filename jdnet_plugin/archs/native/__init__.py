"""Optional native CPU kernels, compiled on first use with the system's C compiler.

SAN's authors compiled their attention kernels at run time (CuPy); StyleGAN's custom ops do the same
with a fallback. Here the one kernel is plain C (no Python or PyTorch headers, about a second to
build), cached under ``$JDNET_CACHE_DIR`` (default ``~/.cache/jdnet_plugin``), called through
``ctypes`` (which releases the GIL) from a small thread pool. Where no compiler is found, the build
fails, or ``JDNET_NATIVE=0``, :func:`sam_attention` returns False and callers use PyTorch.
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
from pathlib import Path

import torch

__all__ = ["available", "sam_attention", "cache_dir"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("sam_attention.c")
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-shared"]
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
    for flags in (_FLAGS, [f for f in _FLAGS if f != "-march=native"]):
        key = hashlib.sha256(b"\0".join([*build_inputs, " ".join(flags).encode()])).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"sam_attention-{key}.so"
        error = None if target.exists() else _compile(compiler, flags, target)
        if error is None:
            lib = ctypes.CDLL(str(target))
            fn = lib.jdnet_sam_rows
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
            return lib
        errors.append(error)
    log.warning("jdnet_plugin: building the native attention kernel failed; the attention runs in PyTorch "
                "(slower). Set JDNET_NATIVE=0 to silence this.\n%s", "\n".join(errors))
    return None


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            lib = None
            if os.environ.get("JDNET_NATIVE", "1") != "0":
                try:
                    lib = _build()
                except OSError as exc:  # a cached file that does not load
                    log.warning("jdnet_plugin: native attention kernel unusable (%s); using PyTorch", exc)
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


def sam_attention(q1: torch.Tensor, q2p: torch.Tensor, vp: torch.Tensor, weight: torch.Tensor,
                  kernel_size: int, slope: float, out: torch.Tensor) -> bool:
    """Fill ``out`` ``(B, M, H, W)`` with SAM's attention (see ``sam_attention.c`` for the shapes), or return
    False when the native kernel is not available or the tensors are not contiguous fp32 CPU tensors."""
    tensors = (q1, q2p, vp, weight, out)
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return False
    lib = _library()
    if lib is None:
        return False
    b, c, h, w = q1.shape
    m, s = out.shape[1], weight.shape[0]
    pad = kernel_size // 2
    if (q2p.shape != (b, c, h + 2 * pad, w + 2 * pad) or vp.shape != (b, m, h + 2 * pad, w + 2 * pad)
            or weight.shape != (s, c) or out.shape != (b, m, h, w) or m % s):
        raise ValueError("sam_attention: inconsistent shapes "
                         f"{[tuple(t.shape) for t in tensors]} for kernel_size {kernel_size}")
    threads = max(1, torch.get_num_threads())
    rows = max(1, -(-h // (2 * threads)))  # two chunks per thread per image: some balance, little overhead

    def run(i: int, y0: int) -> int:
        return lib.jdnet_sam_rows(q1[i].data_ptr(), q2p[i].data_ptr(), vp[i].data_ptr(), weight.data_ptr(),
                                  out[i].data_ptr(), c, m, s, h, w, kernel_size, slope, y0, min(h, y0 + rows))

    jobs = [(i, y0) for i in range(b) for y0 in range(0, h, rows)]
    if threads == 1 or len(jobs) == 1:
        codes = [run(i, y0) for i, y0 in jobs]
    else:
        codes = list(_pool(threads).map(lambda job: run(*job), jobs))
    if any(codes):
        raise MemoryError("sam_attention: the native kernel could not allocate its scratch rows")
    return True
