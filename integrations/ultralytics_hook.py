"""Deraining for Ultralytics YOLO through its callbacks: ``attach_derain(model)`` / ``detach_derain(model)``.

Predict: ``on_predict_batch_start`` replaces the frames in ``predictor.batch`` (paths, frames, ...) by
derained copies at their own resolution, before letterboxing; the caller's arrays are never written.
Boxes and masks are computed on the derained frames, in the same pixel coordinates as the originals, and
``Results.orig_img`` holds the derained frame (what the detector saw).

With ``at="input"`` predict derains the network input instead (the frame letterboxed to ``imgsz``, RGB
float in [0, 1], after ``predictor.preprocess``): fewer pixels when frames are larger than ``imgsz``, the
detector sees the same derained pixels, and ``Results.orig_img`` stays the original frame.

Val: ``on_val_start`` wraps the validator's ``preprocess`` so every batch (letterboxed to ``imgsz``, RGB
float in [0, 1]) is derained before the detector; plain ``model.val(data=...)`` then measures on derained
inputs. Validation inside ``model.train()`` is left alone (training batches are not derained).

``gate="auto"`` (or a threshold) passes frames without rain through untouched (:mod:`jdnet_plugin.gate`);
:func:`derain_gate_stats` says how many were derained. With ``at="input"`` (and in val) the gate scores the
letterboxed input, which holds finer streaks less well when frames are much larger than ``imgsz``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from jdnet_plugin.gate import GateSpec, GateStats, gate_threshold
from jdnet_plugin.inference import derain

from ._weights import WeightsSource, derain_batch, model_device, resolve_derainer
from .torchvision_transform import derain_image

__all__ = ["SUPPORTED_ULTRALYTICS", "check_ultralytics", "load_yolo", "attach_derain", "detach_derain",
           "derain_frames", "is_derain_attached", "derain_gate_stats", "DERAIN_AT"]

SUPPORTED_ULTRALYTICS = ((8, 3, 0), (8, 5, 0))  # [low, high), as in pyproject's extra
_ATTR = "_jdnet_derain"
DERAIN_AT = ("frame", "input")
_INSTALL = "pip install 'jdnet-plugin[ultralytics]'"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def check_ultralytics(version: str | None = None):
    """Import Ultralytics and check its version is in the supported range; returns the module."""
    try:
        import ultralytics
    except ImportError as e:
        raise ImportError(f"the YOLO integration needs Ultralytics: {_INSTALL}") from e
    version = version or ultralytics.__version__
    low, high = SUPPORTED_ULTRALYTICS
    if not low <= _version_tuple(version) < high:
        span = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high[:2]))}"
        raise RuntimeError(
            f"ultralytics {version} is not supported by jdnet-plugin's YOLO hook (callbacks and predictor "
            f"internals differ); supported: ultralytics{span} ({_INSTALL})"
        )
    return ultralytics


def load_yolo(path: str | os.PathLike, task: str | None = None):
    """``YOLO(path)`` without any download: a local weights file, or a model yaml (random weights).

    ``YOLO("yolov8n.pt")`` would fetch the weights from GitHub when the file is missing; this raises
    ``FileNotFoundError`` instead, at once.
    """
    check_ultralytics()
    from ultralytics import YOLO

    text = str(path)
    if Path(text).suffix.lower() not in (".yaml", ".yml") and not Path(text).is_file():
        raise FileNotFoundError(
            f"YOLO weights {text} not found locally (resolved: {Path(text).resolve()}); Ultralytics would try to "
            "download them. Download the file yourself (e.g. from https://github.com/ultralytics/assets/releases) "
            "and pass its path, or build an untrained model from a yaml such as 'yolov8n.yaml'"
        )
    return YOLO(text, task=task)


def derain_frames(frames: Any, model: nn.Module, tile: int | None = None, gate: GateSpec = None,
                  gate_stats: GateStats | None = None) -> Any:
    """Derained copies of what Ultralytics' loaders yield: a list of HxWx3 BGR arrays (or HxW / HxWx1
    grayscale) or an RGB float tensor ``(B, 3, H, W)`` in [0, 1]."""
    if isinstance(frames, torch.Tensor):
        return derain_image(frames, model, tile, gate, gate_stats)
    return derain(frames, model, bgr=True, tile=tile, gate=gate, gate_stats=gate_stats)


LETTERBOX_PAD = 114  # Ultralytics' LetterBox fill value (uint8)


def letterbox_content(img: torch.Tensor) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the smallest box of ``(..., H, W)`` letterboxed images (all of them) outside of
    which every pixel is the letterbox fill; the whole image when there is no such border."""
    pad = LETTERBOX_PAD if not img.is_floating_point() else torch.tensor(LETTERBOX_PAD / 255, dtype=img.dtype)
    content = (img != pad).reshape(-1, *img.shape[-2:]).any(0)
    rows, cols = content.any(1).nonzero().flatten(), content.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return 0, img.shape[-2], 0, img.shape[-1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def unwrap_preprocess(owner) -> Callable:
    """Undo a wrapper of ``owner.preprocess`` put there by a hook; returns the plain ``preprocess``."""
    original = getattr(owner.preprocess, "_jdnet_original", None)
    if original is not None:
        owner.preprocess = original
    return owner.preprocess


@dataclass
class _Hook:
    derainer: nn.Module
    tile: int | None
    follow_device: bool
    gate: GateSpec = None
    at: str = "frame"
    gate_stats: GateStats = field(default_factory=GateStats)
    callbacks: dict[str, Callable] = field(default_factory=dict)

    def model_on(self, device: torch.device | str | None) -> nn.Module:
        if self.follow_device and device is not None and model_device(self.derainer) != torch.device(device):
            self.derainer.to(device)
        return self.derainer

    def derain_input(self, img: torch.Tensor) -> torch.Tensor:
        """The detector's input batch (letterboxed, RGB, float in [0, 1] or uint8), derained, same dtype: only
        the part inside the letterbox's padding (a square 640 input of a 16:9 frame is a quarter padding)."""
        model, kw = self.model_on(img.device), dict(tile=self.tile, gate=self.gate, gate_stats=self.gate_stats)
        y0, y1, x0, x1 = letterbox_content(img)
        if (y1 - y0, x1 - x0) == tuple(img.shape[-2:]):
            return derain_batch(model, img, **kw).to(img.dtype) if img.is_floating_point() else \
                derain_image(img, model, **kw)  # a validator that hands on uint8 keeps uint8
        out = img.clone()
        out[..., y0:y1, x0:x1] = self.derain_input(img[..., y0:y1, x0:x1].contiguous())
        return out

    def wrap_preprocess(self, owner, image_of: Callable[[Any], torch.Tensor], replace: Callable) -> None:
        preprocess = unwrap_preprocess(owner)

        def derain_preprocess(batch: Any) -> Any:
            batch = preprocess(batch)
            return replace(batch, self.derain_input(image_of(batch)))

        derain_preprocess._jdnet_original = preprocess
        owner.preprocess = derain_preprocess

    def on_predict_start(self, predictor) -> None:
        unwrap_preprocess(predictor)  # a predictor is reused across calls: drop an earlier hook's wrapper
        if self.at == "input":
            self.wrap_preprocess(predictor, lambda im: im, lambda im, new: new)

    def on_predict_batch_start(self, predictor) -> None:
        if self.at != "frame":
            return
        batch = list(predictor.batch)
        batch[1] = derain_frames(batch[1], self.model_on(getattr(predictor, "device", None)), self.tile,
                                 self.gate, self.gate_stats)
        predictor.batch = type(predictor.batch)(batch) if isinstance(predictor.batch, tuple) else batch

    def on_val_start(self, validator) -> None:
        if not getattr(validator, "training", False):
            self.wrap_preprocess(validator, lambda b: b["img"], lambda b, new: {**b, "img": new})


def attach_derain(yolo_model, weights: WeightsSource = None, model: nn.Module | None = None,
                  device: str | torch.device | None = None, tile: int | None = None, gate: GateSpec = None,
                  at: str = "frame"):
    """Make ``yolo_model.predict``/``val`` (any task: detect, segment, ...) see derained images.

    ``device=None``: the derainer follows the detector's device. ``gate``: ``None``/"off", "auto" or a
    threshold (:mod:`jdnet_plugin.gate`). ``at``: "frame" derains each frame at its own resolution before
    letterboxing, "input" the letterboxed network input (val always derains the network input). Attaching
    again replaces the previous derainer. Returns ``yolo_model``.
    """
    check_ultralytics()
    if not hasattr(yolo_model, "add_callback") or not hasattr(yolo_model, "callbacks"):
        raise TypeError(f"attach_derain expects an ultralytics YOLO/Model, got {type(yolo_model).__name__}")
    if at not in DERAIN_AT:
        raise ValueError(f"at must be one of {', '.join(DERAIN_AT)}, got {at!r}")
    gate_threshold(gate)
    derainer = resolve_derainer(weights, model, device).eval()
    detach_derain(yolo_model)
    hook = _Hook(derainer, tile, follow_device=device is None, gate=gate, at=at)
    hook.callbacks = {"on_predict_start": hook.on_predict_start,
                      "on_predict_batch_start": hook.on_predict_batch_start, "on_val_start": hook.on_val_start}
    for event, fn in hook.callbacks.items():
        # First in line, so that other callbacks (e.g. tracking, saving) see the derained frames.
        yolo_model.callbacks.setdefault(event, []).insert(0, fn)
    object.__setattr__(yolo_model, _ATTR, hook)
    return yolo_model


def detach_derain(yolo_model) -> bool:
    """Remove what :func:`attach_derain` added; returns whether anything was attached."""
    hook = yolo_model.__dict__.get(_ATTR)
    if hook is None:
        return False
    for event, fn in hook.callbacks.items():
        fns = yolo_model.callbacks.get(event, [])
        if fn in fns:
            fns.remove(fn)
    if getattr(yolo_model, "predictor", None) is not None:
        unwrap_preprocess(yolo_model.predictor)
    del yolo_model.__dict__[_ATTR]
    return True


def is_derain_attached(yolo_model) -> bool:
    return yolo_model.__dict__.get(_ATTR) is not None


def derain_gate_stats(yolo_model) -> GateStats:
    """How many frames the attached derainer derained and passed through since :func:`attach_derain`."""
    hook = yolo_model.__dict__.get(_ATTR)
    if hook is None:
        raise ValueError("no derainer is attached to this model (attach_derain first)")
    return hook.gate_stats
