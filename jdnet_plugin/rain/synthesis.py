"""Rain synthesis: a veil of accumulated rain, streak layers over it, then the camera.

A line-kernel layer (:func:`rain_layer`) scatters drops at random, gives each group of drops a line
kernel (length, width, direction) and blurs the result; convolution is circular, so the rain field is
stationary and streaks crossing an edge re-enter at the opposite one. Noise-seeded and image-based
layers come from :mod:`jdnet_plugin.rain.sources`. Layers are combined with a screen blend
``1 - (1 - I)(1 - R)`` (rain only brightens, never saturates past white), by clipped addition, or by
occlusion ``I (1 - R) + L R`` (blend ``over``: drops of radiance ``L`` in front of the scene), over
the image veiled by ``I t + A (1 - t)`` when the parameters ask for haze; camera blur, noise, sharpening and
JPEG come last. :func:`add_rain_pair` also gives the training target: the clean image through the same
camera blur, noise and sharpening.
"""
from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .sources import draw_value, gaussian_transfer, streak_image_files

from .params import Camera, Haze, RainParams, Range, StreakLayer, resolve_preset

__all__ = ["add_rain", "add_rain_pair", "draw_params", "make_generator", "rain_layer", "check_rain_sources"]

ImageT = TypeVar("ImageT", torch.Tensor, np.ndarray)

_TAPER = 0.3  # fraction of a streak's half-length over which it fades in and out
_OVER_RADIANCE = (0.3, 1.0)  # blend "over": how far the drops' radiance lies from the scene's mean towards white


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
    """``n`` draws (or one float) of ``r``. Unlike :func:`draw_value` it draws even for a fixed number, so the
    line-kernel layers and the veil consume the random stream as they did before ``draw_value`` existed."""
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


def rain_layer(h: int, w: int, layer: StreakLayer, generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """One layer of streaks as an ``(h, w)`` opacity map in [0, 1]."""
    g, device = generator, torch.device(device)
    n = layer.directions
    base = _draw(layer.angle, g)
    angles = base + layer.angle_jitter * (2 * torch.rand(n, generator=g, device=g.device).cpu().double() - 1)
    lengths, widths = _draw(layer.length, g, n), _draw(layer.width, g, n)
    # Drops fall uniformly: a Poisson number per group, each at a random pixel with a random brightness.
    expected = torch.full((n,), draw_value(layer.density, g) / n * h * w, device=g.device)
    counts = torch.poisson(expected, generator=g).long().cpu()
    total = int(counts.sum())
    where = torch.randint(h * w, (total,), generator=g, device=g.device).to(device)
    lo, hi = layer.brightness if isinstance(layer.brightness, tuple) else (layer.brightness,) * 2
    amp = (lo + (hi - lo) * torch.rand(total, generator=g, device=g.device)).to(device)
    group = torch.repeat_interleave(torch.arange(n, device=device), counts.to(device))
    drops = torch.zeros(n * h * w, device=device).index_add_(0, group * (h * w) + where, amp).view(n, h, w)
    kernels = _line_kernels(h, w, angles, lengths, widths, device)
    spec = (torch.fft.rfft2(drops) * torch.fft.rfft2(kernels)).sum(0)
    blur = draw_value(layer.blur, g)
    if blur > 0:
        spec = spec * gaussian_transfer(h, w, blur, device)
    return torch.fft.irfft2(spec, s=(h, w)).clamp_(0, 1)


def _smooth_field(h: int, w: int, g: torch.Generator, like: torch.Tensor, cell: int = 64) -> torch.Tensor:
    coarse = torch.randn(1, 1, max(2, h // cell + 1), max(2, w // cell + 1), generator=g, device=g.device)
    return F.interpolate(coarse.to(like.device, like.dtype), size=(h, w), mode="bilinear", align_corners=True)[0]


def _haze(img: torch.Tensor, haze: Haze, g: torch.Generator) -> torch.Tensor:
    h, w = img.shape[-2:]
    a, t = _draw(haze.atmospheric_light, g), _draw(haze.transmission, g)
    if haze.variation == 0 and haze.depth == 0 and haze.tint == 0 and haze.desaturate == 0:
        return img * t + a * (1 - t)
    t_map = torch.full((1, h, w), t, dtype=img.dtype, device=img.device)
    if haze.variation:
        t_map = t_map + haze.variation * _smooth_field(h, w, g, img)
    depth = draw_value(haze.depth, g)
    if depth:  # far (the top of the frame, tilted at random) is veiled more
        tilt = float(torch.rand(1, generator=g, device=g.device)) - 0.5
        yy = torch.linspace(1, 0, h, device=img.device, dtype=img.dtype)[:, None]
        xx = torch.linspace(-0.5, 0.5, w, device=img.device, dtype=img.dtype)[None, :]
        d = yy + tilt * xx
        d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-6)
        t_map = t_map.clamp(0.02, 1.0) ** (1 + depth * d)
    t_map = t_map.clamp(0.02, 1.0)
    a_rgb = torch.full((img.shape[0], 1, 1), a)
    if haze.tint:
        a_rgb = a_rgb + haze.tint * (2 * torch.rand(img.shape[0], 1, 1, generator=g, device=g.device).cpu() - 1)
    sat = draw_value(haze.desaturate, g)
    if sat:
        img = img + sat * (1 - t_map) * (img.mean(0, keepdim=True) - img)
    return img * t_map + a_rgb.to(img).clamp(0, 1) * (1 - t_map)


def _camera(rainy: torch.Tensor, clean: torch.Tensor, cam: Camera, g: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame blur, sensor noise (the same field) and sharpening on both images, JPEG on the rainy one."""
    blur, noise, quality = (draw_value(v, g) for v in (cam.blur, cam.noise, cam.jpeg))
    if blur > 0.05:
        rainy, clean = (_gaussian(x, blur) for x in (rainy, clean))
    if noise > 0:  # signal-dependent: std = noise at mid-grey, sqrt(0.2) of it at black
        field = torch.randn(rainy.shape, generator=g, device=g.device).to(rainy)
        rainy, clean = ((x + noise * field * (0.2 + 1.6 * x.clamp(0, 1)).sqrt()).clamp(0, 1)
                        for x in (rainy, clean))
    amount = draw_value(cam.sharpen, g)  # a fixed 0 draws nothing: older presets keep their random stream
    if amount > 0:
        sigma = draw_value(cam.sharpen_sigma, g)
        rainy, clean = ((x + amount * (x - _gaussian(x, sigma))).clamp(0, 1) for x in (rainy, clean))
    if quality < 100:
        rainy = _jpeg(rainy, int(round(quality)))
    return rainy, clean


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x[None], [k, k], [sigma, sigma])[0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    import cv2

    rgb = x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    back = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(back)).to(x.device).permute(2, 0, 1).to(x.dtype).div_(255)


def _present(p: float, g: torch.Generator) -> bool:
    return p >= 1 or float(torch.rand(1, generator=g, device=g.device)) < p


def _streak_maps(h: int, w: int, params: RainParams, g: torch.Generator, device: torch.device):
    from .sources import image_streaks, noise_streaks

    sources = ((params.layers, rain_layer), (params.noise_layers, noise_streaks), (params.image_layers, image_streaks))
    for layers, make in sources:
        for layer in layers:
            if _present(layer.p, g):
                yield make(h, w, layer, g, device)


def _rain_one(img: torch.Tensor, params: RainParams, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, H, W)`` float in [0, 1] -> ``(rainy, target)``, the same shape."""
    out = _haze(img, params.haze, g) if params.haze is not None and _present(params.haze.p, g) else img
    blend = params.blend
    if blend == "either":
        blend = "add" if float(torch.rand(1, generator=g, device=g.device)) < 0.5 else "screen"
    if blend == "over":  # the drops' radiance: the scene's mean colour, part of the way to white
        mean = out.mean((-2, -1), keepdim=True)
        radiance = mean + _draw(_OVER_RADIANCE, g) * (1 - mean)
    h, w = img.shape[-2:]
    for r in _streak_maps(h, w, params, g, img.device):
        r = r.to(img.dtype)
        if blend == "over":
            r = r.clamp(0, 1)
            out = out * (1 - r) + radiance * r
        else:
            out = out + r if blend == "add" else 1 - (1 - out) * (1 - r)
    out, target = out.clamp(0, 1), img
    if params.camera is not None and _present(params.camera.p, g):
        out, target = _camera(out, img, params.camera, g)
    return out, target


def draw_params(preset: "str | RainParams", generator: torch.Generator, scale: float = 1.0) -> RainParams:
    """The :class:`RainParams` of one image of ``preset`` (a mixture draws its choice from ``generator``),
    scaled for an image ``scale`` times Rain100L's size."""
    params = resolve_preset(preset).draw(generator)
    return params.scaled(scale) if scale != 1.0 else params


def _rain_batch(x: torch.Tensor, preset: "str | RainParams", g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    resolve_preset(preset)
    out, target = torch.empty_like(x), torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i], target[i] = _rain_one(x[i], draw_params(preset, g), g)
    return out, target


def add_rain_pair(image: torch.Tensor, preset: "str | RainParams" = "light", seed: int | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rainy, target)`` for a float ``(3, H, W)`` or ``(B, 3, H, W)`` tensor in [0, 1]: the target is
    ``image`` through the same camera blur, noise and sharpening as the rainy image (``image`` itself without a
    camera)."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim not in (3, 4):
        raise TypeError("add_rain_pair expects a float (C, H, W) or (B, C, H, W) tensor in [0, 1]")
    batch = image if image.ndim == 4 else image[None]
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    rainy, target = _rain_batch(batch.to(work), preset, make_generator(seed, generator))
    rainy, target = rainy.to(image.dtype), target.to(image.dtype)
    return (rainy, target) if image.ndim == 4 else (rainy[0], target[0])


def add_rain(image: ImageT, preset: "str | RainParams" = "light", seed: int | None = None,
             generator: torch.Generator | None = None) -> ImageT:
    """Add synthetic rain to an image.

    ``image``: a float tensor ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1] (a uint8 tensor is read as
    0..255), or an ``(H, W, 3)`` numpy array (uint8, or float in [0, 1]). Returns the same type, shape,
    dtype and device, clipped to [0, 1]. ``preset``: a name in :data:`PRESETS` (a mixture such as
    ``"mixed"`` or ``"broad"`` draws its choice per image from the generator) or a :class:`RainParams`. The same ``seed`` gives the
    same rain; images of a batch get different rain, drawn in order from one generator.
    """
    g = make_generator(seed, generator)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"add_rain expects an (H, W, 3) array, got shape {image.shape}")
        if image.dtype == np.uint8:
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
            y = _rain_batch(x[None], preset, g)[0][0]
            return y.mul_(255).round_().byte().permute(1, 2, 0).numpy()
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"add_rain expects uint8 or float pixels, got {image.dtype}")
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return _rain_batch(x[None].float(), preset, g)[0][0].permute(1, 2, 0).numpy().astype(image.dtype)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"add_rain expects a torch tensor or numpy array, got {type(image).__name__}")
    if image.ndim not in (3, 4):
        raise ValueError(f"add_rain expects a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    batch = image if image.ndim == 4 else image[None]
    if image.dtype == torch.uint8:
        y = _rain_batch(batch.float().div(255), preset, g)[0].mul_(255).round_().to(torch.uint8)
    elif image.is_floating_point():
        work = torch.float64 if image.dtype == torch.float64 else torch.float32
        y = _rain_batch(batch.to(work), preset, g)[0].to(image.dtype)
    else:
        raise TypeError(f"add_rain expects float or uint8 pixels, got {image.dtype}")
    return y if image.ndim == 4 else y[0]


def check_rain_sources(preset: "str | RainParams", _seen: frozenset = frozenset()) -> None:
    """Fail now, naming the folder, when a preset (a mixture's choices included) needs streak images that are
    not there, rather than in the middle of training or a batch job."""
    p = resolve_preset(preset)
    for choice in getattr(p, "choices", ()):
        if choice not in _seen:
            check_rain_sources(choice, _seen | {choice})
    for layer in getattr(p, "image_layers", ()):
        streak_image_files(layer.root)
