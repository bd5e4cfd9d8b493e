"""An endless, resumable, rank-aware sampler that gives every draw its own seed."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["InfiniteSampler"]


class InfiniteSampler(Sampler):
    """Yields ``(index, draw)`` keys for ever: epoch ``e`` visits a permutation seeded by ``(seed, e)``.

    ``draw`` is the position in the global stream (all ranks together): rank ``r`` of ``world_size`` takes
    draws ``start + r, start + r + world_size, ...``. The datasets of :mod:`jdnet_plugin.data` seed each
    sample by its draw, so a run resumed at ``start`` sees the same samples, whatever the number of
    workers. Pass ``start`` = the number of samples already consumed by all ranks together.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self.rank, self.world_size, self.start = rank, world_size, int(start)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw = self.start + self.rank
        epoch, order = -1, None
        while True:
            e, pos = divmod(draw, self.size)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield int(order[pos]), draw
            draw += self.world_size

    def __len__(self) -> int:  # DataLoader asks for it; the stream is endless
        return 2**62
