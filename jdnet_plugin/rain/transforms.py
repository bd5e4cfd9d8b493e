""":func:`add_rain` as a torchvision-v2 transform: rains on images only, passes boxes, masks and labels through."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import get_worker_info
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2._utils import is_pure_tensor

from .params import RainParams, resolve_preset
from .synthesis import add_rain

__all__ = ["RainSynthesis"]


class RainSynthesis(Transform):
    """Add synthetic rain (an ``nn.Module``, usable in ``torchvision.transforms.v2.Compose``).

    Transforms ``tv_tensors.Image``, PIL images, numpy ``(H, W, 3)`` arrays and a sample's plain image
    tensor; ``Mask``, ``BoundingBoxes`` and other entries pass through unchanged. With ``seed`` the
    sequence of rains is reproducible (each DataLoader worker gets its own stream, derived from the
    seed and the worker id); without it, rain is drawn from torch's global RNG.
    """

    _transformed_types = (tv_tensors.Image, PIL.Image.Image, np.ndarray, is_pure_tensor)

    def __init__(self, preset: "str | RainParams" = "light", seed: int | None = None) -> None:
        super().__init__()
        resolve_preset(preset)  # unknown names fail here, not inside a DataLoader worker
        self.preset = preset
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._owner: tuple[int, int] | None = None

    def _next_seed(self) -> int:
        if self.seed is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        info = get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        if self._owner != owner:
            worker = owner[1] + 1
            self._generator = torch.Generator().manual_seed(int(self.seed) + 1_000_003 * worker)
            self._owner = owner
        return int(torch.randint(0, 2**62, (1,), generator=self._generator).item())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"seed": self._next_seed()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        seed = params["seed"]
        if isinstance(inpt, PIL.Image.Image):
            rgb = np.asarray(inpt.convert("RGB"))
            return PIL.Image.fromarray(add_rain(rgb, self.preset, seed=seed))
        out = add_rain(inpt.as_subclass(torch.Tensor) if isinstance(inpt, torch.Tensor) else inpt,
                       self.preset, seed=seed)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        preset = self.preset if isinstance(self.preset, str) else "RainParams(...)"
        return f"preset={preset!r}, seed={self.seed}"
