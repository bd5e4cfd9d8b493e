"""PSNR and SSIM in the two conventions of ``docs/evaluation.md``.

``convention="y"`` (the published tables, MATLAB style): clip to [0, 1], quantise to 8 bits, BT.601 Y
with the 16 offset rounded to 8 bits; PSNR ``20 log10(255 / RMSE)``; SSIM with an 11-tap Gaussian
window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255 over the 'valid' region.

``convention="rgb"`` (the JDNet authors'): PSNR on RGB in [0, 1] after clipping; SSIM with the same
window on each RGB channel, zero padding, mean over the map. Without ``quantize`` it is differentiable
(the training loss is ``-ssim(..., convention="rgb")``).

Inputs: float tensors ``(B, 3, H, W)`` or ``(3, H, W)`` in ``[0, data_range]``; uint8/uint16 tensors of
the same shapes; numpy arrays ``(H, W, 3)`` or ``(N, H, W, 3)`` (uint8, uint16, or float in
``[0, data_range]``), RGB order. Results have one value per image, ``(B,)``, or a 0-d tensor for a
single unbatched image. Identical images give PSNR ``inf`` and SSIM 1.
"""
from __future__ import annotations


import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONVENTIONS", "rgb_to_y", "psnr", "ssim", "PSNR", "SSIM"]

CONVENTIONS = ("y", "rgb")
WINDOW_SIZE = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
_BT601 = (65.481, 128.553, 24.966)


def _as_batch(x: torch.Tensor | np.ndarray, data_range: float) -> tuple[torch.Tensor, bool]:
    """``(B, 3, H, W)`` float in [0, 1] and whether the input was a single unbatched image."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ValueError(f"numpy images must be (H, W, 3) or (N, H, W, 3) RGB, got shape {x.shape}")
        x = torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3).contiguous()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"images must be (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(x.shape)}")
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype == torch.uint16:
        x = x.double() / 65535.0
    elif not x.is_floating_point():
        raise TypeError(f"images must be float, uint8 or uint16, got {x.dtype}")
    elif data_range != 1.0:
        x = x / data_range
    return x, single


def _pair(pred, target, data_range: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    p, single = _as_batch(pred, data_range)
    t, _ = _as_batch(target, data_range)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    return p, t.to(p.device), single


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to 8 bits as MATLAB's ``im2uint8`` (half away from zero); in [0, 255]."""
    return torch.floor(x.clamp(0, 1) * 255.0 + 0.5)


def rgb_to_y(x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> BT.601 luma ``(B, 1, H, W)`` in [16, 235] (MATLAB ``rgb2ycbcr``).

    With ``quantize`` the RGB input is clipped and rounded to 8 bits and Y is rounded to 8 bits, as the
    published tables do; without it the conversion is linear and differentiable.
    """
    rgb = _quantize(x) if quantize else x * 255.0
    w = torch.tensor(_BT601, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1) / 255.0
    y = 16.0 + (rgb * w).sum(dim=1, keepdim=True)
    return torch.floor(y + 0.5) if quantize else y


def _out(v: torch.Tensor, pred, single: bool) -> torch.Tensor:
    dtype = pred.dtype if isinstance(pred, torch.Tensor) and pred.is_floating_point() else torch.float32
    v = v.to(dtype)
    return v[0] if single else v


def psnr(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, convention: str = "y",
         data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, ``(B,)``; ``inf`` for identical images. See the module docstring."""
    _check(convention)
    p, t, single = _pair(pred, target, data_range)
    if convention == "y":
        p, t, peak = rgb_to_y(p.double()), rgb_to_y(t.double()), 255.0
    else:
        p, t, peak = p.double().clamp(0, 1), t.double().clamp(0, 1), 1.0
    mse = (p - t).pow(2).flatten(1).mean(dim=1)
    return _out(10.0 * torch.log10(peak**2 / mse), pred, single)


def _ssim_zero_padded(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [0, 1] images, Gaussian window per channel, zero padding, mean over the map."""
    c, r = x.shape[1], WINDOW_SIZE // 2
    g = kornia.filters.get_gaussian_kernel1d(WINDOW_SIZE, SIGMA, device=x.device, dtype=x.dtype)[0]
    gh, gv = g.view(1, 1, 1, -1).expand(c, 1, 1, -1), g.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable, so equal to the 2-D window with zero padding
        return F.conv2d(F.conv2d(z, gh, padding=(0, r), groups=c), gv, padding=(r, 0), groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


def ssim(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, convention: str = "y",
         data_range: float = 1.0, quantize: bool | None = None) -> torch.Tensor:
    """SSIM per image, ``(B,)``. See the module docstring.

    ``quantize`` (default: True for "y", False for "rgb") clips and rounds to 8 bits first; leave it off
    for "rgb" when SSIM is a training loss (it is then differentiable).
    """
    _check(convention)
    quantize = (convention == "y") if quantize is None else quantize
    p, t, single = _pair(pred, target, data_range)
    if convention == "y":
        size = min(p.shape[-2:])
        if size < WINDOW_SIZE:
            raise ValueError(f"SSIM-Y needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE}, got {tuple(p.shape[-2:])}")
        py, ty = rgb_to_y(p.double(), quantize), rgb_to_y(t.double(), quantize)
        smap = kornia.metrics.ssim(py, ty, WINDOW_SIZE, max_val=255.0, eps=0.0, padding="valid")
        v = smap.flatten(1).mean(dim=1)
    else:
        if quantize:
            p, t = _quantize(p) / 255.0, _quantize(t) / 255.0
        v = _ssim_zero_padded(p, t)
    return _out(v, pred, single)


class _Metric(nn.Module):
    def __init__(self, convention: str, reduction: str) -> None:
        super().__init__()
        _check(convention)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.convention, self.reduction = convention, reduction

    def _reduce(self, v: torch.Tensor) -> torch.Tensor:
        return v.mean() if self.reduction == "mean" else v.sum() if self.reduction == "sum" else v

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}, reduction={self.reduction!r}"


class PSNR(_Metric):
    """:func:`psnr` as a module; ``reduction`` over the batch: "mean" (default), "sum" or "none"."""

    def __init__(self, convention: str = "y", data_range: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(convention, reduction)
        self.data_range = data_range

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._reduce(psnr(pred, target, self.convention, self.data_range))


class SSIM(_Metric):
    """:func:`ssim` as a module; ``reduction`` over the batch: "mean" (default), "sum" or "none"."""

    def __init__(self, convention: str = "y", data_range: float = 1.0, quantize: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(convention, reduction)
        self.data_range, self.quantize = data_range, quantize

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._reduce(ssim(pred, target, self.convention, self.data_range, self.quantize))
