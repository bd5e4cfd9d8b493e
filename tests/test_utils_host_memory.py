import os
import subprocess
import sys

import pytest
import torch

from jdnet_plugin.utils import host_memory
from jdnet_plugin.utils.host_memory import empty_huge

glibc = pytest.mark.skipif(host_memory._libc() is None, reason="glibc on Linux only")

# Allocates three tensors of MB megabytes, touches them, frees them, ten times; prints the minor page faults
# of the last nine rounds.
_CHURN = """
import resource, sys, torch
from jdnet_plugin.utils.host_memory import keep_freed_memory
print(keep_freed_memory(large_blocks=LARGE), file=sys.stderr)
def rounds(n):
    for _ in range(n):
        ts = [torch.ones(MB << 18) for _ in range(3)]
        del ts
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(9)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: str, mb: int, large: bool = False) -> tuple[int, str]:
    env = dict(os.environ, JDNET_KEEP_FREED_MEMORY=keep)
    code = _CHURN.replace("MB", str(mb)).replace("LARGE", str(large))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]), done.stderr.strip()


@glibc
@pytest.mark.parametrize("mb, large", [(30, False), (48, True)])  # below glibc's largest mmap threshold (32 MiB),
def test_keep_freed_memory_avoids_refaulting_freed_blocks(mb, large):  # and above it with large_blocks
    kept, kept_on = _faults("1", mb, large)
    default, default_on = _faults("0", mb, large)
    assert (kept_on, default_on) == ("True", "False")
    # 27 allocations of MB megabytes (256 pages each per MB): kept, at most one round's three are faulted in (at
    # 48 MB, 1 to 3 of them from run to run: where the heap cannot grow in place, glibc maps a block once);
    # glibc's default (whose dynamic thresholds vary from run to run; always mmap above 32 MiB) gives some back
    # and faults them in again (all 27 at 48 MB).
    pages = mb * 256
    assert kept <= 3 * pages
    assert kept < default / 2


@pytest.mark.parametrize("numel", [1000, (64 << 20) // 4 + 3])
def test_empty_huge_is_a_plain_writable_tensor(numel):
    t = empty_huge(numel, dtype=torch.float32, device="cpu")
    assert t.shape == (numel,) and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.5)
    assert t.sum().item() == pytest.approx(2.5 * numel)


def test_empty_huge_keeps_the_shape_and_dtype():
    t = empty_huge(2, 3, 4, dtype=torch.float64, device=torch.device("cpu"))
    assert t.shape == (2, 3, 4) and t.dtype == torch.float64


def test_a_forward_leaves_the_allocator_alone():
    """Process-wide settings only when asked for: a CPU forward (fast path) never calls mallopt."""
    code = ("import torch, jdnet_plugin\nfrom jdnet_plugin.utils import host_memory\n"
            "m = jdnet_plugin.create_model('jdnet-lite', units=1, scales=1).eval()\n"
            "with torch.inference_mode():\n    m(torch.rand(1, 3, 32, 32))\n"
            "jdnet_plugin.derain(torch.rand(3, 32, 32), m)\n"
            "print('kept' in host_memory._state)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "False"


@glibc
def test_large_blocks_are_opt_in():
    """The derain commands' setting (no ``large_blocks``) leaves blocks over 32 MiB to ``mmap``: a single forward of
    the paper model is faster with fresh maps; only training asks for them to be kept."""
    kept, kept_on = _faults("1", 48, large=False)
    assert kept_on == "True"
    assert kept > 10 * 48 * 256  # each of the 27 blocks faulted in again
