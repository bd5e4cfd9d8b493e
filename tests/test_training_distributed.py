"""jdnet_plugin.training.distributed: the collective helper that outlives no tensor."""
from __future__ import annotations

import subprocess
import sys
import textwrap

# One gloo rank in its own process (no process group in pytest's). Plain dist.all_reduce returns while gloo's
# worker still holds the tensor in about a third of back-to-back calls here; the helper must never.
_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from jdnet_plugin.training.distributed import all_reduce
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    held = 0
    for i in range(2000):
        t = torch.tensor([float(i), 1.0])
        before = t._use_count()
        out = all_reduce(t, op=dist.ReduceOp.MAX if i % 2 else dist.ReduceOp.SUM)
        assert out is t and t.tolist() == [float(i), 1.0], t
        held += t._use_count() > before
    dist.destroy_process_group()
    print("held", held)
""")


def test_all_reduce_returns_after_the_backend_released_the_tensor():
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["held", "0"], r.stdout
