"""Rain synthesis: streaks drawn as sparse drops convolved with line kernels (FFT), screen-blended over a hazed image.

Each streak layer scatters drops at random, gives each group of drops a line kernel (length, width,
direction) and blurs the result; convolution is circular, so the rain field is stationary and streaks
crossing an edge re-enter at the opposite one. Layers are combined with a screen blend
``1 - (1 - I)(1 - R)`` (rain only brightens, never saturates past white) over the image veiled by
``I t + A (1 - t)`` when the parameters ask for haze.
"""
from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .params import Haze, RainParams, Range, StreakLayer, PRESETS, resolve_preset

__all__ = ["add_rain", "make_generator", "rain_layer"]

ImageT = TypeVar("ImageT", torch.Tensor, np.ndarray)

_TAPER = 0.3  # fraction of a streak's half-length over which it fades in and out


def make_generator(seed: int | None = None, generator: torch.Generator | None = None) -> torch.Generator:
    """The generator to draw rain from: ``generator`` itself, one seeded with ``seed``, or one seeded
    from torch's global RNG (so ``torch.manual_seed`` and DataLoader worker seeding apply)."""
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        return generator
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(int(seed))


def _draw(r: Range, g: torch.Generator, n: int | None = None) -> torch.Tensor | float:
    lo, hi = r if isinstance(r, tuple) else (r, r)
    u = torch.rand(n or 1, generator=g, device=g.device).cpu().double()
    v = lo + (hi - lo) * u
    return v if n else float(v.item())


def _line_kernels(h: int, w: int, angles: torch.Tensor, lengths: torch.Tensor, widths: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """``(G, h, w)`` streak kernels centred on pixel (0, 0) with wrap-around, peak 1 for widths >= 1 px."""
    reach = float((lengths.max() / 2 + widths.max() + 2).item())
    sh, sw = min(h, 2 * math.ceil(reach) + 1), min(w, 2 * math.ceil(reach) + 1)
    y = torch.arange(sh, device=device, dtype=torch.float32) - sh // 2
    x = torch.arange(sw, device=device, dtype=torch.float32) - sw // 2
    y, x = y[None, :, None], x[None, None, :]
    theta = torch.deg2rad(angles.float().to(device))[:, None, None]
    half = (lengths.float().to(device) / 2)[:, None, None]
    half_w = (widths.float().to(device) / 2)[:, None, None]
    # Image y points down; a positive angle puts the top of the streak to the right of its bottom.
    along = -x * torch.sin(theta) + y * torch.cos(theta)
    across = x * torch.cos(theta) + y * torch.sin(theta)
    # Exact coverage of a pixel-wide footprint by a band of the streak's width: sub-pixel widths fade.
    cover = (torch.minimum(across + 0.5, half_w) - torch.maximum(across - 0.5, -half_w)).clamp(0, 1)
    t = ((1 - along.abs() / half) / _TAPER).clamp(0, 1)
    kern = cover * t * t * (3 - 2 * t)
    out = torch.zeros(len(angles), h, w, device=device)
    rows = (torch.arange(sh, device=device) - sh // 2) % h
    cols = (torch.arange(sw, device=device) - sw // 2) % w
    out[:, rows[:, None], cols[None, :]] = kern
    return out


def _gaussian_transfer(h: int, w: int, sigma: float, device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))


def rain_layer(h: int, w: int, layer: StreakLayer, generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """One layer of streaks as an ``(h, w)`` opacity map in [0, 1]."""
    g, device = generator, torch.device(device)
    n = layer.directions
    base = _draw(layer.angle, g)
    angles = base + layer.angle_jitter * (2 * torch.rand(n, generator=g, device=g.device).cpu().double() - 1)
    lengths, widths = _draw(layer.length, g, n), _draw(layer.width, g, n)
    # Drops fall uniformly: a Poisson number per group, each at a random pixel with a random brightness.
    expected = torch.full((n,), layer.density / n * h * w, device=g.device)
    counts = torch.poisson(expected, generator=g).long().cpu()
    total = int(counts.sum())
    where = torch.randint(h * w, (total,), generator=g, device=g.device).to(device)
    lo, hi = layer.brightness if isinstance(layer.brightness, tuple) else (layer.brightness,) * 2
    amp = (lo + (hi - lo) * torch.rand(total, generator=g, device=g.device)).to(device)
    group = torch.repeat_interleave(torch.arange(n, device=device), counts.to(device))
    drops = torch.zeros(n * h * w, device=device).index_add_(0, group * (h * w) + where, amp).view(n, h, w)
    kernels = _line_kernels(h, w, angles, lengths, widths, device)
    spec = (torch.fft.rfft2(drops) * torch.fft.rfft2(kernels)).sum(0)
    if layer.blur > 0:
        spec = spec * _gaussian_transfer(h, w, layer.blur, device)
    return torch.fft.irfft2(spec, s=(h, w)).clamp_(0, 1)


def _haze(img: torch.Tensor, haze: Haze, g: torch.Generator) -> torch.Tensor:
    h, w = img.shape[-2:]
    a, t = _draw(haze.atmospheric_light, g), _draw(haze.transmission, g)
    if haze.variation == 0:
        return img * t + a * (1 - t)
    coarse = torch.randn(1, 1, max(2, h // 64 + 1), max(2, w // 64 + 1), generator=g, device=g.device)
    field = F.interpolate(coarse.to(img.device, img.dtype), size=(h, w), mode="bilinear", align_corners=True)
    t_map = (t + haze.variation * field[0]).clamp(0.02, 1.0)
    return img * t_map + a * (1 - t_map)


def _rain_one(img: torch.Tensor, params: RainParams, g: torch.Generator) -> torch.Tensor:
    """``(C, H, W)`` float in [0, 1] -> the same with rain."""
    out = _haze(img, params.haze, g) if params.haze is not None else img
    h, w = img.shape[-2:]
    for layer in params.layers:
        r = rain_layer(h, w, layer, g, img.device).to(img.dtype)
        out = 1 - (1 - out) * (1 - r)
    return out.clamp(0, 1)


def _rain_batch(x: torch.Tensor, preset: "str | RainParams", g: torch.Generator) -> torch.Tensor:
    choice = resolve_preset(preset)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        if isinstance(choice, tuple):
            params = PRESETS[choice[int(torch.randint(len(choice), (1,), generator=g, device=g.device))]]
        else:
            params = choice
        out[i] = _rain_one(x[i], params, g)
    return out


def add_rain(image: ImageT, preset: "str | RainParams" = "light", seed: int | None = None,
             generator: torch.Generator | None = None) -> ImageT:
    """Add synthetic rain to an image.

    ``image``: a float tensor ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1] (a uint8 tensor is read as
    0..255), or an ``(H, W, 3)`` numpy array (uint8, or float in [0, 1]). Returns the same type, shape,
    dtype and device, clipped to [0, 1]. ``preset``: a name in :data:`PRESETS`, ``"mixed"`` (light or
    heavy per image, drawn from the generator) or a :class:`RainParams`. The same ``seed`` gives the
    same rain; images of a batch get different rain, drawn in order from one generator.
    """
    g = make_generator(seed, generator)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"add_rain expects an (H, W, 3) array, got shape {image.shape}")
        if image.dtype == np.uint8:
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
            y = _rain_batch(x[None], preset, g)[0]
            return y.mul_(255).round_().byte().permute(1, 2, 0).numpy()
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"add_rain expects uint8 or float pixels, got {image.dtype}")
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return _rain_batch(x[None].float(), preset, g)[0].permute(1, 2, 0).numpy().astype(image.dtype)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"add_rain expects a torch tensor or numpy array, got {type(image).__name__}")
    if image.ndim not in (3, 4):
        raise ValueError(f"add_rain expects a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    batch = image if image.ndim == 4 else image[None]
    if image.dtype == torch.uint8:
        y = _rain_batch(batch.float().div(255), preset, g).mul_(255).round_().to(torch.uint8)
    elif image.is_floating_point():
        work = torch.float64 if image.dtype == torch.float64 else torch.float32
        y = _rain_batch(batch.to(work), preset, g).to(image.dtype)
    else:
        raise TypeError(f"add_rain expects float or uint8 pixels, got {image.dtype}")
    return y if image.ndim == 4 else y[0]
