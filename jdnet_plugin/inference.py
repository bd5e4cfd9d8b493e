"""Inference: tensors in bounded memory (overlapping tiles), and ``derain()`` for arrays, PIL images and tensors.

:func:`derain_tensor` is the one path every caller goes through (the CLIs, the integrations, :func:`derain`):

- runs under ``torch.inference_mode`` on the model's device, in the model's dtype or under autocast for
  ``dtype="bfloat16"|"float16"``;
- images smaller than ``model.min_size`` are reflection-padded and cropped back;
- each forward call sees at most ``max_pixels`` pixels (batch x H x W): larger images are cut into
  overlapping ``tile`` x ``tile`` tiles, blended with linear ramps across the overlap (the outermost quarter
  of each overlap, where a tile lacks context, gets weight 0), so the result has no seams and peak memory
  depends on the tile size, not on the image size;
- the output is clamped to [0, 1] (as it would be when saved) and returned on the input's device;
- with ``gate=`` (``"auto"`` or a threshold; see :mod:`jdnet_plugin.gate`), images whose :func:`rain_score` is
  below the threshold come back unchanged and only the others go through the model.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .gate import GateSpec, GateStats, crop_boxes, gate_threshold, streak_score
from .utils.color import luma

__all__ = ["MAX_PIXELS", "MEMORY_BUDGET", "OVERLAP", "DTYPES", "default_max_pixels", "derain_tensor", "tile_layout",
           "tile_starts", "balanced_tile", "tile_weights", "derain", "get_model", "rain_score", "gated"]

# Pixels per forward call (batch x H x W) before tiling: at most 1 MP, fewer where the model's working memory
# (``model.inference_bytes_per_pixel``) would exceed MEMORY_BUDGET: the process then stays within about 3 GB
# (torch and the model take about 0.6 GB). The paper-size JDNet gets about 0.37 MP.
MAX_PIXELS = 1 << 20
MEMORY_BUDGET = 2 << 30
# Pixels shared by neighbouring tiles. With the default weights (benchmarks/tiling_check.py, 100 Rain100L
# images, tiled vs whole PSNR, min): tiles 128 / overlap 32 -> 38.2 dB, 128 / 64 -> 40.7 dB, 256 / 64 -> 49.2 dB.
OVERLAP = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _param(model: nn.Module) -> torch.Tensor | None:
    return next(model.parameters(), None)


def tile_layout(size: int, tile: int, overlap: int, align: int = 1) -> tuple[int, list[int]]:
    """Tile length and start offsets covering ``size`` pixels along one axis.

    As few tiles as a ``tile``-long tile needs, each as short as that number allows (640 pixels with
    ``tile=512, overlap=32`` take two tiles of 336, not of 512); neighbours overlap by >= ``overlap``; every
    start is a multiple of ``align`` (the model's :attr:`tile_align`: on a shifted grid its strided pyramid
    computes something else, so misaligned tiles disagree with the whole image far from their edges).
    """
    if size <= tile:
        return size, [0]
    if tile - overlap < 2 * align - 1:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) by at least {2 * align - 1} "
                         f"(twice the alignment {align}, less one)")
    n = math.ceil((size - overlap) / (tile - overlap))
    while True:
        length = max(math.ceil((size - overlap) / n) + overlap, overlap + align)
        length += (size - length) % align  # so that the last start, size - length, is aligned
        if length <= tile:  # always true once length is near overlap + align: n grows until it is
            break
        n += 1
    return length, tile_starts(size, length, overlap, align)


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of ``tile``-long tiles covering ``size``, overlapping by >= ``overlap``, multiples of
    ``align`` (the last one ends at ``size``, so ``size - tile`` must be a multiple of ``align``)."""
    if size <= tile:
        return [0]
    if (size - tile) % align:
        raise ValueError(f"size - tile ({size} - {tile}) must be a multiple of align ({align})")
    last, step = (size - tile) // align, (tile - overlap) // align
    if step < 1:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) by at least the alignment ({align})")
    k = max(1, math.ceil(last / step))
    return sorted({i * last // k * align for i in range(k + 1)})


def balanced_tile(size: int, tile: int, overlap: int, align: int = 1) -> int:
    """The tile length :func:`tile_layout` picks."""
    return tile_layout(size, tile, overlap, align)[0]


def tile_weights(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Blending weights along one side of a tile: ramps at the sides shared with a neighbour.

    Two tiles overlapping by exactly ``overlap`` get weights summing to 1 (a partition of unity); the first
    ``overlap // 4`` pixels of a shared side get 0, so a tile's edge (short of context) never shows.
    """
    i = torch.arange(length, dtype=torch.float32)
    d = torch.full((length,), float("inf"))
    if not at_start:
        d = torch.minimum(d, i)
    if not at_end:
        d = torch.minimum(d, length - 1 - i)
    m = overlap // 4
    return ((d - m + 1) / (overlap - 2 * m + 1)).clamp(0, 1)


def default_max_pixels(model: nn.Module) -> int:
    """Pixels per forward call for ``model``: :data:`MAX_PIXELS`, or fewer when its working memory per pixel
    (``inference_bytes_per_pixel``, where it declares one) would pass :data:`MEMORY_BUDGET`."""
    per_pixel = getattr(model, "inference_bytes_per_pixel", None)
    if not per_pixel:
        return MAX_PIXELS
    return max(128 * 128, min(MAX_PIXELS, MEMORY_BUDGET // int(per_pixel)))


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad bottom/right to at least ``size``: reflection where possible, edge replication beyond it."""
    for dim, pad in ((-2, lambda p: (0, 0, 0, p)), (-1, lambda p: (0, p, 0, 0))):
        while x.shape[dim] < size:
            need = size - x.shape[dim]
            step = min(need, x.shape[dim] - 1)
            x = F.pad(x, pad(step), mode="reflect") if step > 0 else F.pad(x, pad(need), mode="replicate")
    return x


def _forward(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = _pad_to(x, int(getattr(model, "min_size", 1)))
    if autocast is not None:
        with torch.autocast(device_type=x.device.type, dtype=autocast):
            y = model(x)
    else:
        y = model(x)
    return y[..., :h, :w].float()


def derain_tensor(model: nn.Module, x: torch.Tensor, *, tile: int | None = None, overlap: int = OVERLAP,
                  batch_size: int = 4, dtype: torch.dtype | str | None = None,
                  max_pixels: int | None = None, gate: GateSpec = None,
                  gate_stats: GateStats | None = None) -> torch.Tensor:
    """Derain ``(B, 3, H, W)`` (or ``(3, H, W)``) float RGB in [0, 1]; see the module docstring.

    ``tile``: tile side (default: only when an image exceeds ``max_pixels``, then the largest square tile
    within it); ``overlap``: pixels shared by neighbouring tiles; ``batch_size``: images or tiles per forward
    call (also bounded by ``max_pixels``, default :func:`default_max_pixels`); ``dtype``: "float32",
    "bfloat16" or "float16" (autocast); ``gate``: ``None``/"off", "auto" or a threshold (images scoring below
    it are passed through; ``gate_stats`` counts them).
    Returns float32 (float64 for float64 input), clamped to [0, 1], on ``x``'s device.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"derain_tensor expects a float tensor in [0, 1], got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 3:
        return derain_tensor(model, x[None], tile=tile, overlap=overlap, batch_size=batch_size, dtype=dtype,
                             max_pixels=max_pixels, gate=gate, gate_stats=gate_stats)[0]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if max_pixels is None:
        max_pixels = default_max_pixels(model)
    if batch_size < 1 or max_pixels < 1 or overlap < 0:
        raise ValueError(f"batch_size and max_pixels must be >= 1 and overlap >= 0, got {batch_size}, "
                         f"{max_pixels}, {overlap}")
    b, _, h, w = x.shape
    align = int(getattr(model, "tile_align", 1))
    if tile is None and h * w > max_pixels:
        tile = max(overlap + 2 * align, math.isqrt(max_pixels) // 8 * 8)
    if tile is not None and tile - overlap < 2 * align - 1:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) by at least {2 * align - 1} for this "
                         f"model (twice its tile alignment {align}, less one)")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if gate_threshold(gate) is not None:
        return gated(model, x.clamp(0, 1).to(out_dtype), gate, lambda t: derain_tensor(
            model, t, tile=tile, overlap=overlap, batch_size=batch_size, dtype=dtype, max_pixels=max_pixels),
            gate_stats=gate_stats, dtype=dtype)
    p = _param(model)
    device = p.device if p is not None else x.device
    compute = p.dtype if p is not None and p.is_floating_point() else torch.float32
    autocast = _dtype(dtype)
    autocast = autocast if autocast not in (None, torch.float32, compute) else None

    with torch.inference_mode():
        if tile is None or (h <= tile and w <= tile):
            n = max(1, min(batch_size, max_pixels // (h * w)))
            out = torch.cat([_forward(model, x[i:i + n].to(device, compute), autocast).to(x.device)
                             for i in range(0, b, n)])
        else:
            out = _tiled(model, x, tile, overlap, align, n_max=batch_size, max_pixels=max_pixels, device=device,
                         compute=compute, autocast=autocast)
    # Outside inference mode, so that callers get an ordinary tensor (in-place ops and autograd allowed).
    return out.clamp(0, 1).to(out_dtype)


def rain_score(model: nn.Module, x: torch.Tensor, *, dtype: torch.dtype | str | None = None) -> torch.Tensor:
    """How much rain each image of ``(B, 3, H, W)`` (or ``(3, H, W)``) holds, ``(B,)`` on ``x``'s device: the
    model's removed layer on a few full-resolution crops, measured by :func:`jdnet_plugin.gate.streak_score`
    (0 for a clean image, several units for visible rain; ``gate="auto"`` derains from
    :data:`jdnet_plugin.gate.AUTO_THRESHOLD`)."""
    if x.dim() == 3:
        return rain_score(model, x[None], dtype=dtype)[0]
    boxes = crop_boxes(*x.shape[-2:])
    crops = torch.stack([x[i, :, y:y + s, x0:x0 + s] for i in range(x.shape[0]) for y, x0, s in boxes]).float()
    training = model.training
    if training:
        model.eval()  # calibrated in eval mode; a model being trained keeps its state
    try:
        derained = derain_tensor(model, crops, batch_size=len(boxes), dtype=dtype).to(crops.device)
    finally:
        if training:
            model.train()
    return streak_score(crops.clamp(0, 1), derained).view(x.shape[0], len(boxes)).mean(1).to(x.device)


def gated(model: nn.Module, x: torch.Tensor, gate: GateSpec, run: Callable[[torch.Tensor], torch.Tensor], *,
          gate_stats: GateStats | None = None, dtype: torch.dtype | str | None = None) -> torch.Tensor:
    """``run`` on the images of ``(B, 3, H, W)`` whose :func:`rain_score` reaches ``gate``'s threshold, the others
    as they are (``run(x)`` without a gate); ``gate_stats`` counts both. Autograd flows through ``run``."""
    threshold = gate_threshold(gate)
    if threshold is None:
        return run(x)
    keep = rain_score(model, x.detach(), dtype=dtype) >= threshold
    if gate_stats is not None:
        gate_stats.update(keep)
    if keep.all():
        return run(x)
    out = x.clone()
    if keep.any():
        out[keep] = run(x[keep]).to(out.dtype)
    return out


def _tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int, align: int, n_max: int, max_pixels: int,
           device: torch.device, compute: torch.dtype, autocast: torch.dtype | None) -> torch.Tensor:
    b, _, h, w = x.shape
    (th, ys), (tw, xs) = tile_layout(h, tile, overlap, align), tile_layout(w, tile, overlap, align)
    boxes = [(y0, x0) for y0 in ys for x0 in xs]
    weights = {(y0, x0): (tile_weights(th, overlap, y0 == 0, y0 + th == h)[:, None]
                          * tile_weights(tw, overlap, x0 == 0, x0 + tw == w)[None, :]).to(x.device)
               for y0, x0 in boxes}
    n = max(1, min(n_max, max_pixels // (th * tw)))
    out = torch.zeros(b, 3, h, w, dtype=torch.float32, device=x.device)
    norm = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
    for y0, x0 in boxes:
        norm[..., y0:y0 + th, x0:x0 + tw] += weights[y0, x0]
    jobs = [(i, y0, x0) for i in range(b) for y0, x0 in boxes]
    for k in range(0, len(jobs), n):
        chunk = jobs[k:k + n]
        batch = torch.stack([x[i, :, y0:y0 + th, x0:x0 + tw] for i, y0, x0 in chunk])
        pred = _forward(model, batch.to(device, compute), autocast).to(x.device)
        for (i, y0, x0), t in zip(chunk, pred):
            out[i, :, y0:y0 + th, x0:x0 + tw] += t * weights[y0, x0]
    return out.div_(norm)


# ----------------------------------------------------------------------------------------------- derain()

@functools.lru_cache(maxsize=4)
def _cached_model(weights: str, device: str) -> nn.Module:
    from .checkpoint import load_model

    return load_model(weights, device=device)


def get_model(weights: str | os.PathLike | None = None, device: str | torch.device | None = None) -> nn.Module:
    """A JDNet loaded once per ``(weights, device)`` and cached; default weights "default", device CUDA if any."""
    from .registry import DEFAULT_WEIGHTS

    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    return _cached_model(str(weights if weights is not None else DEFAULT_WEIGHTS), str(device))


def _derain_channels(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    """``(B, C, H, W)`` float in [0, 1], C in 1 (gray), 3 (RGB), 4 (RGBA) -> same layout, derained."""
    c = x.shape[1]
    rgb = x[:, :3] if c >= 3 else x.expand(-1, 3, -1, -1)
    y = derain_tensor(model, rgb, **kw).to(x.dtype)
    if c == 1:
        y = luma(y)
    elif c == 4:
        y = torch.cat([y, x[:, 3:]], dim=1)
    return y


def _int_max(dtype) -> float:
    return float(np.iinfo(dtype).max) if isinstance(dtype, np.dtype) else float(torch.iinfo(dtype).max)


def _derain_numpy(model: nn.Module, a: np.ndarray, bgr: bool, kw: dict) -> np.ndarray:
    if a.ndim == 2:
        return _derain_numpy(model, a[..., None], bgr, kw)[..., 0]
    if a.ndim == 3:
        return _derain_numpy(model, a[None], bgr, kw)[0]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"numpy images must be (H, W), (H, W, 1|3|4) or (N, H, W, 1|3|4), got shape {a.shape}")
    if a.dtype.kind == "u":
        scale = _int_max(a.dtype)
    elif a.dtype.kind == "f":
        scale = 1.0
    else:
        raise TypeError(f"numpy images must be unsigned integers or floats in [0, 1], got {a.dtype}")
    if bgr and a.shape[-1] >= 3:
        a = np.concatenate([a[..., 2::-1], a[..., 3:]], axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32)).permute(0, 3, 1, 2) / scale
    y = _derain_channels(model, x, **kw).permute(0, 2, 3, 1).numpy()
    if bgr and y.shape[-1] >= 3:
        y = np.concatenate([y[..., 2::-1], y[..., 3:]], axis=-1)
    if a.dtype.kind == "u":
        return np.clip(np.floor(y * scale + 0.5), 0, scale).astype(a.dtype)
    return np.ascontiguousarray(y).astype(a.dtype)


def _derain_tensor_any(model: nn.Module, t: torch.Tensor, kw: dict) -> torch.Tensor:
    if t.dim() == 3:
        return _derain_tensor_any(model, t[None], kw)[0]
    if t.dim() != 4 or t.shape[1] not in (1, 3, 4):
        raise ValueError(f"tensors must be (C, H, W) or (B, C, H, W) with C in 1, 3, 4, got {tuple(t.shape)}")
    if t.is_floating_point():
        return _derain_channels(model, t, **kw).to(t.dtype)
    if t.dtype not in (torch.uint8, torch.uint16):
        raise TypeError(f"tensors must be float in [0, 1], uint8 or uint16, got {t.dtype}")
    scale = _int_max(t.dtype)
    y = _derain_channels(model, t.float() / scale, **kw)
    return (y * scale).round_().clamp_(0, scale).to(t.dtype)


def _derain_pil(model: nn.Module, im, kw: dict):
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.uint16 if mode != "I" else np.int64)
        if mode == "I":
            a = np.clip(a, 0, 65535).astype(np.uint16)
        return Image.fromarray(_derain_numpy(model, a, False, kw))
    if mode not in ("L", "LA", "RGB", "RGBA"):
        # Palettes, CMYK, YCbCr...: derained as RGB (RGBA when they carry transparency) and returned so.
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    a = np.asarray(im)
    if im.mode == "LA":
        g = _derain_numpy(model, a[..., :1], False, kw)
        return Image.fromarray(np.concatenate([g, a[..., 1:]], axis=-1), "LA")
    return Image.fromarray(_derain_numpy(model, a, False, kw), im.mode)


def derain(image: Any, model: nn.Module | None = None, weights: str | os.PathLike | None = None, *,
           bgr: bool = False, device: str | torch.device | None = None, **kwargs) -> Any:
    """Derain an image or a batch and return the same kind: same type, dtype, value range and shape.

    Accepts numpy ``(H, W, 3)`` uint8/uint16/float (RGB, or OpenCV's BGR with ``bgr=True``), ``(N, H, W, 3)``
    batches, ``(H, W)`` / ``(H, W, 1)`` grayscale, ``(H, W, 4)`` RGBA; PIL images (L, LA, RGB, RGBA, I;16;
    other modes come back as RGB/RGBA); tensors ``(3, H, W)`` / ``(B, 3, H, W)`` float in [0, 1], uint8 or
    uint16 (1 or 4 channels too); a list of any of these gives a list back. Grayscale is derained as RGB and
    converted back with BT.601 luma; alpha is kept unchanged. ``model``: a JDNet (else ``weights``, default
    the "default" weights, loaded once and cached). ``kwargs`` go to :func:`derain_tensor` (tile, overlap,
    batch_size, dtype, max_pixels, and ``gate="auto"`` to leave images without rain untouched).
    """
    if model is not None and weights is not None:
        raise ValueError("pass either model= or weights=, not both")
    if model is None:
        model = get_model(weights, device)
    if isinstance(image, (list, tuple)):
        return type(image)(derain(im, model, bgr=bgr, **kwargs) for im in image)
    if isinstance(image, np.ndarray):
        return _derain_numpy(model, image, bgr, kwargs)
    if isinstance(image, torch.Tensor):
        return _derain_tensor_any(model, image, kwargs)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _derain_pil(model, image, kwargs)
    raise TypeError(f"derain() takes numpy arrays, PIL images, tensors or lists of them, got {type(image).__name__}")
