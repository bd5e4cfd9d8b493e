"""Streak sources beside the line kernels of :func:`jdnet_plugin.rain.rain_layer`: noise-seeded streaks
(:func:`noise_streaks`) and photometrically rendered streak images (:func:`image_streaks`). Each returns an
``(h, w)`` opacity map in [0, 1], every random choice drawn from the given ``torch.Generator``."""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

from .params import NoiseStreaks, Range, StreakImages

__all__ = ["draw_value", "gaussian_transfer", "noise_streaks", "image_streaks", "streak_image_files",
           "STREAKS_ENV", "StreakImagesNotFound"]

STREAKS_ENV = "JDNET_RAIN_STREAKS"
_DEFAULT_STREAKS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rain_streaks" / "garg_nayar"


class StreakImagesNotFound(FileNotFoundError):
    """No folder of streak images: set ``root``, or the ``JDNET_RAIN_STREAKS`` environment variable."""


def draw_value(r: Range, g: torch.Generator) -> float:
    """A number as is, or a uniform draw from a ``(low, high)`` pair (no draw for a number)."""
    if not isinstance(r, tuple):
        return float(r)
    u = float(torch.rand(1, generator=g, device=g.device).item())
    return r[0] + (r[1] - r[0]) * u


def gaussian_transfer(h: int, w: int, sigma: float, device: torch.device) -> torch.Tensor:
    """The ``rfft2`` transfer function of a Gaussian blur of ``sigma`` pixels (circular)."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))


def _motion_kernels(h: int, w: int, angles: torch.Tensor, lengths: torch.Tensor, device: torch.device
                    ) -> torch.Tensor:
    """``(G, h, w)`` uniform motion-blur kernels (sum 1) centred on pixel (0, 0) with wrap-around."""
    from .synthesis import _line_kernels  # one definition of a streak's footprint

    k = _line_kernels(h, w, angles, lengths, torch.ones_like(lengths), device)
    return k / k.sum(dim=(1, 2), keepdim=True).clamp_min(1e-8)


def _levels(x: torch.Tensor, brightness: float, gamma: float) -> torch.Tensor:
    """Levels: the median (overlapping blur, the background) goes to black, the bright streaks (the 99th
    percentile) reach ``brightness``, gamma between."""
    sample = x.flatten()[:: max(1, x.numel() // 200_000)].float()
    black, white = (float(v) for v in torch.quantile(sample, torch.tensor([0.5, 0.99], device=sample.device)))
    if white <= black:
        return torch.zeros_like(x)
    return ((x - black) / (white - black)).clamp(0, 1).pow(gamma).mul(brightness)


def noise_streaks(h: int, w: int, layer: NoiseStreaks, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Seeds where uniform noise falls under ``density``, widened, motion-blurred, brightened."""
    g, device = generator, torch.device(device)
    n = layer.directions
    density, sigma = draw_value(layer.density, g), draw_value(layer.width, g)
    base = draw_value(layer.angle, g)
    angles = base + layer.angle_jitter * (2 * torch.rand(n, generator=g, device=g.device).cpu().double() - 1)
    lengths = torch.tensor([draw_value(layer.length, g) for _ in range(n)], dtype=torch.float64)
    brightness, gamma, blur = (draw_value(v, g) for v in (layer.brightness, layer.gamma, layer.blur))
    noise = torch.rand(n, h, w, generator=g, device=g.device).to(device)
    amp = torch.rand(n, h, w, generator=g, device=g.device).to(device)
    seeds = torch.where(noise < density / n, 0.4 + 0.6 * amp, torch.zeros_like(amp))
    spec = (torch.fft.rfft2(seeds) * torch.fft.rfft2(_motion_kernels(h, w, angles, lengths, device))).sum(0)
    spec = spec * gaussian_transfer(h, w, math.hypot(sigma, blur), device)
    return _levels(torch.fft.irfft2(spec, s=(h, w)).clamp_(min=0), brightness, gamma)


def _streaks_root(root: str | None) -> Path:
    path = Path(root or os.environ.get(STREAKS_ENV) or _DEFAULT_STREAKS)
    if not path.is_dir():
        raise StreakImagesNotFound(
            f"streak images: {path} is not a folder (set StreakImages.root or ${STREAKS_ENV} to a folder of "
            "grey streak images on black, e.g. the Garg-Nayar database)")
    return path


def streak_image_files(root: str | None = None) -> tuple[Path, ...]:
    """The streak images of ``root`` (see :class:`StreakImages`), sorted; an error naming the folder if none.
    The environment variable is read at each call; a folder's listing is read once."""
    return _listing(_streaks_root(root))


@functools.lru_cache(maxsize=8)
def _listing(path: Path) -> tuple[Path, ...]:
    from ..io import list_images

    files = tuple(sorted(list_images(path, recursive=False)))
    if not files:
        raise StreakImagesNotFound(f"streak images: {path} holds no images")
    return files


@functools.lru_cache(maxsize=256)
def _read_streak(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: cannot read streak image")
    return img


def _streak_crop(img: np.ndarray, h: int, w: int, scale: float, angle: float, g: torch.Generator) -> np.ndarray:
    """An ``(h, w)`` window of ``img`` (tiled as needed) zoomed by ``scale`` and rotated by ``angle``."""
    import cv2

    side = int(math.ceil(math.hypot(h, w) / scale)) + 2
    reps = (side // img.shape[0] + 2, side // img.shape[1] + 2)
    tiled = np.tile(img, reps)
    y0 = int(torch.randint(tiled.shape[0] - side + 1, (1,), generator=g, device=g.device))
    x0 = int(torch.randint(tiled.shape[1] - side + 1, (1,), generator=g, device=g.device))
    src = np.ascontiguousarray(tiled[y0:y0 + side, x0:x0 + side])
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
    m[:, 2] += (w / 2 - side / 2, h / 2 - side / 2)
    return cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def image_streaks(h: int, w: int, layer: StreakImages, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` random streak images, each cropped, zoomed, rotated and brightened, mixed by their maximum."""
    g = generator
    files = streak_image_files(layer.root)
    count = max(1, round(draw_value(layer.count, g)))
    out = np.zeros((h, w), np.float32)
    for _ in range(count):
        img = _read_streak(files[int(torch.randint(len(files), (1,), generator=g, device=g.device))])
        scale, angle, gain = (draw_value(v, g) for v in (layer.scale, layer.angle, layer.brightness))
        crop = _streak_crop(img, h, w, scale, angle, g).astype(np.float32) * (gain / 255.0)
        np.maximum(out, crop, out=out)
    x = torch.from_numpy(out).to(device)
    blur = draw_value(layer.blur, g)
    if blur > 0:
        x = torch.fft.irfft2(torch.fft.rfft2(x) * gaussian_transfer(h, w, blur, x.device), s=(h, w))
    return x.clamp_(0, 1)
