"""JDNet as a ``torchvision.transforms.v2`` transform, and the function behind it."""
from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform

from jdnet_plugin.gate import GateSpec, GateStats, gate_threshold
from jdnet_plugin.inference import derain

from ._weights import WeightsSource, ordinary, resolve_derainer

__all__ = ["derain_image", "derain_pil", "JDNetTransform"]

PIL_MODES = ("L", "LA", "RGB", "RGBA", "I;16")


def is_pure_tensor(x: Any) -> bool:
    """A plain tensor, not a tv_tensor (boxes, masks, ...)."""
    return isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor)


def derain_image(img: torch.Tensor, model: nn.Module, tile: int | None = None, gate: GateSpec = None,
                 gate_stats: GateStats | None = None) -> torch.Tensor:
    """Derain image tensors ``(..., C, H, W)``; same shape, dtype, device and value range out.

    ``jdnet_plugin.inference.derain`` on the images flattened to a batch: float in [0, 1], uint8 or
    uint16; C = 3 (RGB), 4 (RGBA: alpha kept) or 1 (grayscale: derained as RGB, returned as BT.601 luma).
    ``gate``: see :mod:`jdnet_plugin.gate` (images without rain come back unchanged).
    """
    if img.dim() < 3:
        raise ValueError(f"expected images (..., C, H, W), got shape {tuple(img.shape)}")
    if img.numel() == 0:
        return img.clone()
    out = derain(img.reshape(-1, *img.shape[-3:]), model, tile=tile, gate=gate, gate_stats=gate_stats)
    return ordinary(out.reshape(img.shape))


def derain_pil(img: PIL.Image.Image, model: nn.Module, tile: int | None = None, gate: GateSpec = None,
               gate_stats: GateStats | None = None) -> PIL.Image.Image:
    """Derain a PIL image (modes L, LA, RGB, RGBA, I;16); same mode and size out."""
    if img.mode not in PIL_MODES:
        raise ValueError(
            f"cannot derain a PIL image of mode {img.mode!r} (supported: {', '.join(PIL_MODES)}); convert it "
            "first, and pass segmentation masks as tv_tensors.Mask so transforms leave them alone"
        )
    return derain(img, model, tile=tile, gate=gate, gate_stats=gate_stats)


class JDNetTransform(Transform):
    """Derain images in a torchvision v2 pipeline; boxes, masks, labels and other entries pass through.

    PIL images stay PIL (same mode); tensors ``(C,H,W)``/``(B,C,H,W)`` and ``tv_tensors.Image``/``Video``
    keep their type, shape, dtype and value range. The deraining model is a submodule, so ``.to(device)``
    moves it; inputs on another device are derained there and returned on their own device.

    In DataLoader workers keep it on the CPU; for GPU deraining apply it after collation, to the batch on
    the GPU (``batch = transform(batch.to("cuda"))``), not inside the dataset.

    ``gate="auto"`` (or a threshold) leaves images without rain untouched (:mod:`jdnet_plugin.gate`);
    ``gate_stats`` counts how many were derained and passed through (in DataLoader workers each worker counts
    in its own copy of the transform).

    >>> t = JDNetTransform("checkpoints/jdnet.pt")  # doctest: +SKIP
    >>> img, target = t(img, {"boxes": boxes, "labels": labels})  # doctest: +SKIP
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image, is_pure_tensor)

    def __init__(self, weights: WeightsSource = None, model: nn.Module | None = None,
                 device: str | torch.device | None = None, tile: int | None = None, gate: GateSpec = None) -> None:
        super().__init__()
        gate_threshold(gate)  # a bad gate fails here, not on the first image
        self.model = resolve_derainer(weights, model, device).eval()
        self.tile, self.gate = tile, gate
        self.gate_stats = GateStats()

    def train(self, mode: bool = True) -> "JDNetTransform":
        super().train(mode)
        self.model.eval()  # a preprocessing step: never in training mode
        return self

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        kw = dict(tile=self.tile, gate=self.gate, gate_stats=self.gate_stats)
        if isinstance(inpt, PIL.Image.Image):
            return derain_pil(inpt, self.model, **kw)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            out = derain_image(inpt.as_subclass(torch.Tensor), self.model, **kw)
            return tv_tensors.wrap(out, like=inpt)
        if is_pure_tensor(inpt):
            return derain_image(inpt, self.model, **kw)
        return inpt

    # torchvision < 0.21 names the hook ``_transform``.
    _transform = transform
