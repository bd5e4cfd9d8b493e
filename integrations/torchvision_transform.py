"""JDNet as a ``torchvision.transforms.v2`` transform, and the function behind it."""
from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as TF

from ._weights import WeightsSource, derain_batch, resolve_derainer

__all__ = ["derain_image", "derain_pil", "JDNetTransform"]

PIL_MODES = ("L", "LA", "RGB", "RGBA")


def is_pure_tensor(x: Any) -> bool:
    """A plain tensor, not a tv_tensor (boxes, masks, ...)."""
    return isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor)


def derain_image(img: torch.Tensor, model: nn.Module, tile: int | None = None) -> torch.Tensor:
    """Derain image tensors ``(..., C, H, W)``; same shape, dtype, device and value range out.

    Integer dtypes are full-range (uint8: 0..255), floats are in [0, 1]. C = 3 (RGB) or 4 (RGBA: alpha
    kept); C = 1 or 2 (grayscale, + alpha) is derained as RGB and returned as grayscale.
    """
    if img.dim() < 3 or img.shape[-3] not in (1, 2, 3, 4):
        raise ValueError(f"expected images (..., C, H, W) with C in 1..4, got shape {tuple(img.shape)}")
    c, h, w = img.shape[-3:]
    if img.numel() == 0:
        return img.clone()
    x = TF.to_dtype(img.reshape(-1, c, h, w), torch.float32, scale=True)
    color = 3 if c >= 3 else 1
    rgb = x[:, :color].expand(-1, 3, -1, -1)
    out = derain_batch(model, rgb, tile)
    if color == 1:
        out = TF.rgb_to_grayscale(out)
    out = torch.cat([out, x[:, color:]], 1)
    return TF.to_dtype(out, img.dtype, scale=True).reshape(img.shape)


def derain_pil(img: PIL.Image.Image, model: nn.Module, tile: int | None = None) -> PIL.Image.Image:
    """Derain a PIL image of mode L, LA, RGB or RGBA; same mode and size out."""
    if img.mode not in PIL_MODES:
        raise ValueError(
            f"cannot derain a PIL image of mode {img.mode!r} (supported: {', '.join(PIL_MODES)}); convert it "
            "first, and pass segmentation masks as tv_tensors.Mask so transforms leave them alone"
        )
    return TF.to_pil_image(derain_image(TF.pil_to_tensor(img), model, tile), mode=img.mode)


class JDNetTransform(Transform):
    """Derain images in a torchvision v2 pipeline; boxes, masks, labels and other entries pass through.

    PIL images stay PIL (same mode); tensors ``(C,H,W)``/``(B,C,H,W)`` and ``tv_tensors.Image``/``Video``
    keep their type, shape, dtype and value range. The deraining model is a submodule, so ``.to(device)``
    moves it; inputs on another device are derained there and returned on their own device.

    In DataLoader workers keep it on the CPU; for GPU deraining apply it after collation, to the batch on
    the GPU (``batch = transform(batch.to("cuda"))``), not inside the dataset.

    >>> t = JDNetTransform("checkpoints/jdnet.pt")  # doctest: +SKIP
    >>> img, target = t(img, {"boxes": boxes, "labels": labels})  # doctest: +SKIP
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image, is_pure_tensor)

    def __init__(self, weights: WeightsSource = None, model: nn.Module | None = None,
                 device: str | torch.device | None = None, tile: int | None = None) -> None:
        super().__init__()
        self.model = resolve_derainer(weights, model, device).eval()
        self.tile = tile

    def train(self, mode: bool = True) -> "JDNetTransform":
        super().train(mode)
        self.model.eval()  # a preprocessing step: never in training mode
        return self

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return derain_pil(inpt, self.model, self.tile)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            out = derain_image(inpt.as_subclass(torch.Tensor), self.model, self.tile)
            return tv_tensors.wrap(out, like=inpt)
        if is_pure_tensor(inpt):
            return derain_image(inpt, self.model, self.tile)
        return inpt

    # torchvision < 0.21 names the hook ``_transform``.
    _transform = transform
