"""Host-memory settings for large CPU forwards.

A CPU forward of the paper model on a 320x480 image allocates and frees tens of 20 MB tensors per unit.
With glibc's defaults much of that memory goes back to the kernel on ``free`` and comes back through
page faults on the next ``malloc``: about 900,000 faults (3.6 GB of zeroed pages) and 20 % of the
forward's time on a 2-core machine. Two remedies, both no-ops where they do not apply:

- :func:`keep_freed_memory`: glibc's ``mallopt`` so that blocks up to 32 MiB come from the heap and up to
  1 GiB of freed heap stays mapped (the same idea as PyTorch's CUDA caching allocator, and what
  jemalloc/tcmalloc do for PyTorch's CPU deployments); with ``large_blocks=True``, blocks of every size in the
  main thread's heap (no ``mmap``: glibc cannot raise its threshold past 32 MiB, and a training step of the
  paper model frees and re-allocates blocks of 50 MB and more at every step; glibc still maps a block where the
  heap cannot grow, and other threads' blocks over 64 MiB). The cost: the process stays at its peak memory.
  Process-wide, so only where asked for: the package's command lines call it for their own process; a program
  that embeds the package calls it itself (a forward never does). ``JDNET_KEEP_FREED_MEMORY=0`` makes it a no-op.
- :func:`empty_huge`: a large buffer whose pages are faulted in 2 MiB at a time (transparent huge pages,
  ``madvise``), for the buffers this package allocates itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading

import torch

__all__ = ["keep_freed_memory", "empty_huge"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value (its dynamic threshold's ceiling)
_TRIM_THRESHOLD = 1 << 30
_MADV_HUGEPAGE = 14
_HUGE_MIN_BYTES = 64 << 20

_lock = threading.Lock()
_state: dict[str, object] = {}


def _libc():
    if "libc" not in _state:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                lib.gnu_get_libc_version  # glibc only (musl has no mallopt thresholds)
            except (OSError, AttributeError):
                lib = None
        _state["libc"] = lib
    return _state["libc"]


def keep_freed_memory(large_blocks: bool = False) -> bool:
    """Once per process: keep freed heap memory for reuse instead of returning it to the kernel.

    ``large_blocks``: blocks over 32 MiB too, for processes that repeat the same large allocations (training
    steps); a single forward of the paper model is slower with it (its largest buffers, fresh maps advised to
    use huge pages, come from the heap instead), so the derain commands leave it off.
    Returns whether the setting is in effect (glibc on Linux, not disabled by ``JDNET_KEEP_FREED_MEMORY=0``).
    """
    with _lock:
        if "kept" not in _state:
            libc = _libc()
            ok = libc is not None and os.environ.get("JDNET_KEEP_FREED_MEMORY", "1") != "0"
            if ok:
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
            _state["kept"] = ok
        if large_blocks and _state["kept"] and "kept_large" not in _state:
            _state["kept_large"] = bool(_libc().mallopt(_M_MMAP_MAX, 0))
        return bool(_state["kept"]) and (not large_blocks or bool(_state.get("kept_large")))


def empty_huge(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty(shape)``; on CPU and Linux, buffers of 64 MiB or more are advised to use transparent
    huge pages before their first touch (512x fewer page faults where the kernel allows it)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    libc = _libc() if out.device.type == "cpu" and nbytes >= _HUGE_MIN_BYTES else None
    if libc is not None:
        page = mmap.PAGESIZE
        start = -(-out.data_ptr() // page) * page
        end = (out.data_ptr() + nbytes) // page * page
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    return out
