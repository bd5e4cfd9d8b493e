"""Deraining datasets: paired folders, the authors' side-by-side images, unpaired photos, clean images + rain.

Items are ``dict(rain=Tensor(3, P, P), clean=Tensor(3, P, P), name=str)`` (unpaired: no ``clean``), float in
[0, 1]; ``patch_size=None`` gives whole images. A dataset can be indexed by a key ``(index, sample_seed)``
as :class:`jdnet_plugin.training.InfiniteSampler` yields: every random choice of a sample (crop window, flips,
rain) then comes from ``(dataset seed, sample_seed)`` alone, so the batches do not depend on the number of
DataLoader workers. An int index draws its sample seed from torch's random generator, so each call (each
epoch of a shuffled ``DataLoader``) gets fresh crops and rain, reproducible under ``torch.manual_seed``.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import IMAGE_EXTENSIONS, ImageReadError, exif_orientation, list_images, read_image, read_rgb, to_tensor
from .transforms import PairedAugment, paired_random_crop

__all__ = ["DatasetError", "FORMATS", "RAIN_DIR_NAMES", "CLEAN_DIR_NAMES", "pair_key", "pair_files",
           "find_pair_dirs", "detect_format", "make_dataset", "PairedImageDataset", "SideBySideDataset",
           "UnpairedDataset", "SyntheticRainDataset", "ConcatDataset", "collate", "scale_range"]

FORMATS = ("paired", "side-by-side", "unpaired", "clean")
# Sub-folder names of the usual layouts (Rain100L/H, Rain1400, BasicSR's lq/gt), case-insensitive.
RAIN_DIR_NAMES = ("rain", "rainy", "rainy_image", "rain_image", "input", "inputs", "lq", "degraded")
CLEAN_DIR_NAMES = ("norain", "clean", "ground_truth", "groundtruth", "gt", "target", "targets", "hq")
_RAIN_TOKENS = {"rain", "rainy", "input", "lq", "degraded"}
_CLEAN_TOKENS = {"norain", "clean", "gt", "target", "groundtruth", "hq"}

class DatasetError(ValueError):
    """A dataset that cannot be used as asked; the message names the folder or files."""


def _tokens(path: Path) -> list[str]:
    return [t for t in re.split(r"[-_. ]+", path.stem.lower()) if t]


def pair_key(path: Path) -> tuple[str, str | None]:
    """``(key, role)``: the name without its rain/clean words, and ``"rain"``, ``"clean"`` or None.

    ``rain-001.png`` and ``norain-001.png`` (Rain100L) share the key ``"001"``.
    """
    tokens = _tokens(path)
    role = "clean" if _CLEAN_TOKENS & set(tokens) else "rain" if _RAIN_TOKENS & set(tokens) else None
    kept = [t for t in tokens if t not in _RAIN_TOKENS | _CLEAN_TOKENS]
    return "-".join(kept) or path.stem.lower(), role


def pair_files(rain_files: Sequence[Path], clean_files: Sequence[Path], where: str = "") -> list[tuple[Path, Path]]:
    """Match rainy to clean files by name (see :func:`pair_key`); several rainy versions of one clean image
    (Rain1400's ``12_3.jpg`` for ``12.jpg``) share it. Unmatched rainy files are skipped with a warning."""
    clean = {}
    for f in clean_files:
        clean.setdefault(pair_key(f)[0], f)
    pairs, unmatched = [], []
    for f in rain_files:
        key = pair_key(f)[0]
        base = re.sub(r"-\d+$", "", key)
        match = clean.get(key) or clean.get(base)
        (pairs.append((f, match)) if match is not None else unmatched.append(f))
    if not pairs:
        raise DatasetError(
            f"no usable rainy/clean pairs{where}: {len(rain_files)} rainy and {len(clean_files)} clean images, "
            f"no names match (rainy e.g. {[p.name for p in rain_files[:3]]}, "
            f"clean e.g. {[p.name for p in clean_files[:3]]})"
        )
    if unmatched:
        warnings.warn(f"{len(unmatched)} rainy images{where} have no clean match and are skipped, "
                      f"e.g. {[p.name for p in unmatched[:3]]}", stacklevel=2)
    return pairs


def find_pair_dirs(root: Path, pair_dirs: Sequence[str] | None = None) -> tuple[Path, Path] | None:
    """The rainy and clean sub-folders of ``root``: named by ``pair_dirs`` or found by their usual names."""
    if pair_dirs is not None:
        if len(pair_dirs) != 2:
            raise DatasetError(f"pair_dirs must name two folders (rainy, clean), got {list(pair_dirs)}")
        dirs = (root / pair_dirs[0], root / pair_dirs[1])
        for d in dirs:
            if not d.is_dir():
                raise DatasetError(f"{d} is not a folder")
        return dirs
    subs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    rain = next((subs[n] for n in RAIN_DIR_NAMES if n in subs), None)
    clean = next((subs[n] for n in CLEAN_DIR_NAMES if n in subs), None)
    return (rain, clean) if rain is not None and clean is not None else None


def _images(path: Path, recursive: bool = True) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path} does not exist")
    files = list_images(path, recursive=recursive)
    if not files:
        raise DatasetError(f"{path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _flat_pairs(files: list[Path]) -> tuple[list[Path], list[Path]]:
    roles = [pair_key(f)[1] for f in files]
    return ([f for f, r in zip(files, roles) if r == "rain"], [f for f, r in zip(files, roles) if r == "clean"])


def _looks_side_by_side(path: Path) -> bool:
    """Both halves show the same scene: their luminance is strongly correlated."""
    img = read_rgb(path).astype(np.float32).mean(axis=2)
    h, w = img.shape
    if w % 2 or w < 8:
        return False
    left, right = img[:, : w // 2].ravel(), img[:, w // 2:].ravel()
    if left.std() < 1e-3 or right.std() < 1e-3:
        return False
    return float(np.corrcoef(left, right)[0, 1]) > 0.6


def detect_format(path: str | os.PathLike, pair_dirs: Sequence[str] | None = None) -> str:
    """``"paired"`` (rainy and clean sub-folders, or ``rain-*``/``norain-*`` files in one folder),
    ``"side-by-side"`` (each image: clean left half, rainy right half) or ``"unpaired"`` (rainy images only).

    A folder of clean images looks like ``"unpaired"``: pass ``format="clean"`` (``--synthetic-rain``).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_dir() and find_pair_dirs(path, pair_dirs) is not None:
        return "paired"
    files = _images(path)
    rain, clean = _flat_pairs(files)
    if rain and clean:
        return "paired"
    sample = files[:: max(1, len(files) // 3)][:3]
    return "side-by-side" if all(_looks_side_by_side(f) for f in sample) else "unpaired"


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` as :func:`read_image` returns it, from the file header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return (w, h) if exif_orientation(path.read_bytes()) in (5, 6, 7, 8) else (h, w)
    except Exception:  # noqa: BLE001 - Ultralytics patches Image.open; any failure: decode to get the reason
        pass
    try:
        return read_image(path).shape[:2]
    except ImageReadError as e:
        raise DatasetError(f"cannot read image: {e}") from e


class _Base(Dataset):
    def __init__(self, patch_size: int | None, seed: int, augment: PairedAugment | None, cache: bool) -> None:
        if patch_size is not None and patch_size < 1:
            raise DatasetError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.seed = int(seed)
        self.augment = augment or PairedAugment()
        self.cache = cache
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        if self.cache and path in self._cache:
            return self._cache[path]
        try:
            img = read_rgb(path)
        except ImageReadError as e:
            raise DatasetError(str(e)) from e
        if self.cache:
            self._cache[path] = img
        return img

    def _rng(self, key) -> tuple[int, np.random.Generator]:
        index, sample_seed = split_key(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        return index % len(self), np.random.default_rng([self.seed, int(sample_seed) & 0xFFFFFFFFFFFF])

    def _window(self, images: list[np.ndarray], rng: np.random.Generator, what: str,
                size: int | None = None) -> list[np.ndarray]:
        """The same random crop (``size``, else ``patch_size``) and augmentation of ``images``."""
        size = size or self.patch_size
        if size is not None:
            try:
                images = paired_random_crop(images, size, rng)
            except ValueError as e:
                raise DatasetError(f"{what}: {e}") from e
        if self.augment.enabled:
            images = self.augment(images, rng)
        return images

    def _check_crop(self, h: int, w: int, what: str) -> None:
        if self.patch_size is not None and (self.patch_size > h or self.patch_size > w):
            raise DatasetError(f"{what}: crop {self.patch_size}x{self.patch_size} is bigger than the image ({h}x{w})")


class PairedImageDataset(_Base):
    """Pairs of ``(rainy file, clean file)`` of equal size; aligned random crops."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], patch_size: int | None = None, seed: int = 0,
                 augment: PairedAugment | None = None, cache: bool = False, check: bool = True,
                 root: Path | None = None) -> None:
        super().__init__(patch_size, seed, augment, cache)
        self.pairs = [(Path(r), Path(c)) for r, c in pairs]
        if not self.pairs:
            raise DatasetError("no rainy/clean pairs given")
        self.root = root
        if check:
            for r, c in self.pairs:
                hr, hc = _image_size(r), _image_size(c)
                if hr != hc:
                    raise DatasetError(f"pair sizes differ: {r} is {hr[0]}x{hr[1]}, {c} is {hc[0]}x{hc[1]}")
                self._check_crop(*hr, what=str(r))

    @classmethod
    def from_folder(cls, root: str | os.PathLike, pair_dirs: Sequence[str] | None = None, **kwargs
                    ) -> "PairedImageDataset":
        """Rainy/clean sub-folders (``rain/`` + ``norain/``, ...) or ``rain-*``/``norain-*`` in one folder."""
        root = Path(root)
        dirs = find_pair_dirs(root, pair_dirs) if root.is_dir() else None
        if dirs is not None:
            rain, clean = _images(dirs[0], recursive=False), _images(dirs[1], recursive=False)
            where = f" between {dirs[0]} and {dirs[1]}"
        else:
            rain, clean = _flat_pairs(_images(root, recursive=False))
            where = f" in {root}"
            if not rain or not clean:
                raise DatasetError(
                    f"no usable rainy/clean pairs in {root}: expected sub-folders named like "
                    f"{RAIN_DIR_NAMES[0]}/ + {CLEAN_DIR_NAMES[0]}/ (or pair_dirs), or files rain-*/norain-*"
                )
        return cls(pair_files(rain, clean, where), root=dirs[0] if dirs is not None else root, **kwargs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key) -> dict:
        index, rng = self._rng(key)
        r, c = self.pairs[index]
        rain, clean = self._read(r), self._read(c)
        if rain.shape != clean.shape:
            raise DatasetError(f"pair sizes differ: {r} is {rain.shape[0]}x{rain.shape[1]}, "
                               f"{c} is {clean.shape[0]}x{clean.shape[1]}")
        rain, clean = self._window([rain, clean], rng, str(r))
        return {"rain": to_tensor(rain), "clean": to_tensor(clean), "name": _name(r, self.root)}


class SideBySideDataset(_Base):
    """The authors' paired files: one image of width 2W, clean on the left half, rainy on the right."""

    def __init__(self, files: Sequence[Path] | str | os.PathLike, patch_size: int | None = None, seed: int = 0,
                 augment: PairedAugment | None = None, cache: bool = False, check: bool = True) -> None:
        super().__init__(patch_size, seed, augment, cache)
        self.root = Path(files) if isinstance(files, (str, os.PathLike)) else None
        self.files = _images(self.root) if self.root is not None else [Path(f) for f in files]
        if not self.files:
            raise DatasetError("no side-by-side images given")
        if check:
            for f in self.files:
                h, w = _image_size(f)
                self._check_width(f, w)
                self._check_crop(h, w // 2, str(f))

    @staticmethod
    def _check_width(f: Path, w: int) -> None:
        if w % 2:
            raise DatasetError(f"{f}: width {w} is odd; a side-by-side pair is clean (left) | rainy (right), "
                               "two halves of equal width")

    def __getitem__(self, key) -> dict:
        index, rng = self._rng(key)
        f = self.files[index]
        img = self._read(f)
        self._check_width(f, img.shape[1])
        w = img.shape[1] // 2
        clean, rain = self._window([img[:, :w], img[:, w:]], rng, str(f))
        return {"rain": to_tensor(rain), "clean": to_tensor(clean), "name": _name(f, self.root)}


class UnpairedDataset(_Base):
    """Rainy images without ground truth (inference): ``dict(rain, name)``; whole images by default."""

    def __init__(self, files: Sequence[Path] | str | os.PathLike, patch_size: int | None = None, seed: int = 0,
                 cache: bool = False) -> None:
        super().__init__(patch_size, seed, None, cache)
        self.root = Path(files) if isinstance(files, (str, os.PathLike)) else None
        self.files = _images(self.root) if self.root is not None else [Path(f) for f in files]
        if not self.files:
            raise DatasetError("no images given")

    def __getitem__(self, key) -> dict:
        index, rng = self._rng(key)
        f = self.files[index]
        (rain,) = self._window([self._read(f)], rng, str(f))
        return {"rain": to_tensor(rain), "name": _name(f, self.root)}


class SyntheticRainDataset(_Base):
    """Clean images with rain synthesised on the fly (:func:`jdnet_plugin.rain.add_rain`) on each crop.

    ``preset``: a rain preset name (``jdnet_plugin.rain.list_rain_presets()``; ``"broad"`` for training) or a
    ``RainParams``. The target is the clean crop through the rain's camera blur and noise, if any. The crop
    is taken first, so the cost of synthesis is that of a patch, not of the whole image. ``clean_fraction``:
    the share of samples left dry (input = target), which teaches the model to leave rain-free images alone.
    ``render_scale``: a number or ``[low, high]`` (drawn log-uniformly per sample), >= 1: the rain is drawn on a
    window that many times the crop, then rainy image and target are shrunk to the crop together (antialiased),
    so that streaks come thinner, shorter and fainter over finer scenery, as in photos taken large and shown
    small; 1 (the default) draws at the crop's own scale. It needs ``patch_size``.
    """

    def __init__(self, files: Sequence[Path] | str | os.PathLike, preset="light", patch_size: int | None = None,
                 seed: int = 0, augment: PairedAugment | None = None, cache: bool = False, check: bool = True,
                 clean_fraction: float = 0.0, render_scale: float | Sequence[float] = 1.0) -> None:
        super().__init__(patch_size, seed, augment, cache)
        if not 0.0 <= clean_fraction <= 1.0:
            raise DatasetError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
        self.clean_fraction = float(clean_fraction)
        self.render_scale = scale_range(render_scale)
        if self.render_scale != (1.0, 1.0) and patch_size is None:
            raise DatasetError("render_scale needs a patch_size (the crop the rain is shrunk to)")
        from ..rain import check_rain_sources

        try:  # an unknown name or missing streak images fail here, not in a DataLoader worker
            check_rain_sources(preset)
        except (KeyError, FileNotFoundError) as e:
            raise DatasetError(str(e)) from None
        self.preset = preset
        self.root = Path(files) if isinstance(files, (str, os.PathLike)) else None
        self.files = _images(self.root) if self.root is not None else [Path(f) for f in files]
        if not self.files:
            raise DatasetError("no clean images given")
        if check and patch_size is not None:
            for f in self.files:
                self._check_crop(*_image_size(f), what=str(f))

    def __getitem__(self, key) -> dict:
        from ..rain import add_rain_pair

        index, rng = self._rng(key)
        f = self.files[index]
        image = self._read(f)
        size = self.patch_size
        low, high = self.render_scale
        if high > 1.0:  # no draw when off: the same stream as before the setting existed
            scale = low * (high / low) ** rng.random()
            size = min(round(self.patch_size * scale), *image.shape[:2])
        (clean,) = self._window([image], rng, str(f), size)
        clean = to_tensor(clean)
        if self.clean_fraction and rng.random() < self.clean_fraction:  # no draw at 0: same stream as before
            clean = _shrink(clean, self.patch_size)
            return {"rain": clean.clone(), "clean": clean, "name": _name(f, self.root)}
        rain, target = add_rain_pair(clean, self.preset, seed=int(rng.integers(0, 2**31 - 1)))
        return {"rain": _shrink(rain.clamp(0, 1), self.patch_size), "clean": _shrink(target, self.patch_size),
                "name": _name(f, self.root)}


def scale_range(value: float | Sequence[float]) -> tuple[float, float]:
    """``render_scale`` as ``(low, high)``, checked: a number ``s`` (or ``[s]``) is ``(s, s)``; ``1 <= low <= high``."""
    values = [value] if isinstance(value, (int, float)) else list(value) if isinstance(value, (list, tuple)) else []
    if len(values) in (1, 2) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = float(values[0]), float(values[-1])
        if 1.0 <= low <= high < float("inf"):
            return low, high
    raise DatasetError(f"render_scale must be a number >= 1 or [low, high] with 1 <= low <= high, got {value!r}")


def _shrink(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """A ``(C, H, W)`` image resized to ``size`` x ``size`` (antialiased), unchanged when it already is."""
    if size is None or image.shape[-2:] == (size, size):
        return image
    out = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)[0]
    return out.clamp(0, 1)


def split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(index, sample_seed)`` of a dataset key; an int index gets a fresh seed from torch's generator."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), int(torch.randint(0, 2**48, ()).item())


class ConcatDataset(Dataset):
    """Several datasets as one; accepts the ``(index, sample_seed)`` keys of the datasets above."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise DatasetError("no datasets to concatenate")
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key) -> dict:
        index, seed = split_key(key)
        index %= len(self)
        i = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.datasets[i][(index - int(self.offsets[i]), seed)]


def _name(path: Path, root: Path | None) -> str:
    if root is not None and root.is_dir():
        try:
            return path.relative_to(root).with_suffix("").as_posix()
        except ValueError:
            pass
    return path.stem


def make_dataset(path: str | os.PathLike | Sequence[str | os.PathLike], format: str | None = None,
                 patch_size: int | None = None, synthetic_rain=None, seed: int = 0,
                 augment: PairedAugment | None = None, cache: bool = False, pair_dirs: Sequence[str] | None = None,
                 require_pairs: bool = False, clean_fraction: float = 0.0,
                 render_scale: float | Sequence[float] = 1.0) -> Dataset:
    """The dataset of any supported folder (format detected with :func:`detect_format` unless given).

    ``synthetic_rain`` (a preset) means ``path`` holds clean images (a folder tree) to make rainy. Several
    paths give one :class:`ConcatDataset`. ``require_pairs``: a folder of rainy images only is an error.
    ``clean_fraction``, ``render_scale``: with synthetic rain, the share of samples left dry and the scale the
    rain is drawn at (:class:`SyntheticRainDataset`).
    """
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            path = path[0]
        else:
            return ConcatDataset([make_dataset(p, format, patch_size, synthetic_rain, seed, augment, cache,
                                               pair_dirs, require_pairs, clean_fraction, render_scale)
                                  for p in path])
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    if synthetic_rain is not None:
        if format not in (None, "clean"):
            raise DatasetError(f"synthetic rain needs a folder of clean images, not format {format!r}")
        format = "clean"
    format = format or detect_format(path, pair_dirs)
    kw = dict(patch_size=patch_size, seed=seed, cache=cache)
    if format == "paired":
        return PairedImageDataset.from_folder(path, pair_dirs, augment=augment, **kw)
    if format == "side-by-side":
        return SideBySideDataset(path, augment=augment, **kw)
    if format == "clean":
        return SyntheticRainDataset(path, synthetic_rain or "light", augment=augment, clean_fraction=clean_fraction,
                                    render_scale=render_scale, **kw)
    if require_pairs:
        raise DatasetError(
            f"{path} holds rainy images without clean ground truth; training needs rain/ + norain/ "
            "sub-folders, side-by-side pairs (clean | rainy), or clean images with synthetic rain"
        )
    return UnpairedDataset(path, **kw)


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep names as a list (what ``default_collate`` does, without its type dispatch)."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "name"}
    out["name"] = [it["name"] for it in items]
    return out
