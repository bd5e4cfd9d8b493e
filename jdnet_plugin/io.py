"""Image files in and out: clear errors naming the file, atomic writes, RGB order everywhere."""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .utils.atomic import atomic_write_bytes

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "read_rgb", "write_rgb", "exif_orientation",
           "apply_orientation", "to_tensor", "to_uint8", "read_image", "write_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file that is missing, unreadable or corrupt; the message names the file."""


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files of a folder (sorted), by extension."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB: grayscale is repeated, alpha dropped, 16-bit scaled."""
    img = read_image(path)
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an ``(H, W, 3)`` RGB (or RGBA) uint8/uint16 array atomically; the format follows the extension."""
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"write_rgb expects (H, W, 3|4) pixels for {path}, got shape {rgb.shape}")
    return write_image(path, rgb, params)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8, clipped and rounded as when saved."""
    return x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of an encoded JPEG, PNG or WebP image; 1 (as stored) otherwise.

    TIFF is left out on purpose: OpenCV's TIFF decoder applies the orientation itself."""
    from PIL import JpegImagePlugin, PngImagePlugin, WebPImagePlugin

    # The format's own reader, not Image.open: Ultralytics replaces that with one that may pip-install a
    # HEIF plugin for files PIL does not know.
    head = data[:16]
    if head.startswith(b"\x89PNG") and b"eXIf" not in data:
        return 1  # and no second decode: PIL loads a PNG's pixels looking for a late eXIf chunk
    reader = (JpegImagePlugin.JpegImageFile if head.startswith(b"\xff\xd8") else
              PngImagePlugin.PngImageFile if head.startswith(b"\x89PNG") else
              WebPImagePlugin.WebPImageFile if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None)
    if reader is None:
        return 1
    try:
        with reader(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged header: the pixels decoded, so keep them as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as a viewer shows them, from pixels stored with EXIF ``orientation`` (what PIL's
    ``ImageOps.exif_transpose`` and ``cv2.imread`` do)."""
    if orientation in (5, 6, 7, 8):
        img = np.swapaxes(img, 0, 1)  # transpose, then flip as for 2, 1, 4, 3
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        img = img[:, ::-1]
    if orientation in (3, 4):
        img = img[::-1]
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as shown: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8 or uint16.

    Unlike :func:`read_rgb`, nothing is dropped: alpha and 16-bit depth are kept (channels in RGB order).
    An EXIF orientation (phone photos) is applied, as ``cv2.imread`` and Ultralytics do, so the pixels are
    upright (outputs are written without the tag).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    # Decode from bytes: Ultralytics replaces cv2.imread on import (its version turns 16-bit into 8-bit
    # and may try to install a HEIF plugin for unreadable files); cv2.imdecode is left alone. It ignores
    # EXIF orientation with IMREAD_UNCHANGED (needed for alpha and 16 bits), so that is applied below.
    data = np.fromfile(path, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f"{path}: cannot decode image (corrupt, empty or unsupported format)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(img.shape[2])
        if code is None:
            raise ImageReadError(f"{path}: unsupported number of channels {img.shape[2]}")
        img = cv2.cvtColor(img, code)
    return np.ascontiguousarray(apply_orientation(img, exif_orientation(data.tobytes())))


def write_image(path: str | os.PathLike, img: np.ndarray, params: list[int] | None = None) -> Path:
    """Write what :func:`read_image` returns (gray, RGB or RGBA; uint8 or uint16) atomically.

    The format follows the extension; one that cannot hold the depth or the channels (JPEG and 16 bits,
    for example) raises ``OSError`` naming the file rather than writing something else.
    """
    path = Path(path)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image expects uint8 or uint16 pixels for {path}, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    elif img.ndim != 2:
        raise ValueError(f"write_image expects (H, W), (H, W, 3) or (H, W, 4) pixels for {path}, got {img.shape}")
    ext = path.suffix.lower()
    if img.dtype == np.uint16 and ext not in (".png", ".tif", ".tiff"):
        raise OSError(f"{path}: {ext} cannot store 16-bit pixels; use .png or .tif")
    if img.ndim == 3 and img.shape[2] == 4 and ext not in (".png", ".tif", ".tiff", ".webp"):
        raise OSError(f"{path}: {ext} cannot store an alpha channel; use .png, .tif or .webp")
    try:
        ok, data = cv2.imencode(ext, img, params or [])
    except cv2.error as e:
        raise OSError(f"{path}: OpenCV could not write this format ({e.err})") from e
    if not ok:
        raise OSError(f"{path}: OpenCV could not write this format")
    return atomic_write_bytes(path, data.tobytes())
