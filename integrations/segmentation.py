"""Deraining in front of any segmentation ``nn.Module`` (segmentation-models-pytorch or not)."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from jdnet_plugin.gate import GateSpec, GateStats, gate_threshold
from jdnet_plugin.inference import gated

from ._weights import WeightsSource, resolve_derainer, run_derainer

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "smp_encoder_info", "smp_preprocessing", "smp_pad_multiple",
           "create_smp_model", "pad_to_multiple", "SegmenterAdapter", "DerainSegmenter"]

_INSTALL = "pip install 'jdnet-plugin[smp]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# smp 0.6 keeps each encoder's preprocessing in a config.json on the Hugging Face hub; these are the
# values smp <= 0.3 shipped for the encoders that differ from ImageNet's, so nothing is downloaded.
_NON_IMAGENET = {
    "inceptionv4": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "inceptionresnetv2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "xception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dpn": ((124 / 255, 117 / 255, 104 / 255), (1 / (0.0167 * 255),) * 3),
}


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError(f"smp models need segmentation-models-pytorch: {_INSTALL}") from e
    return smp


def smp_encoder_info(segmenter: nn.Module) -> dict | None:
    """``{"encoder_name", "encoder_weights", "encoder_depth"}`` of an smp model, ``None`` for other modules."""
    smp = sys.modules.get("segmentation_models_pytorch")  # not imported: cannot be an smp model
    base = getattr(getattr(smp, "base", None), "SegmentationModel", None)
    encoder = getattr(segmenter, "encoder", None)
    if base is None or not isinstance(segmenter, base) or encoder is None:
        return None
    config = dict(getattr(segmenter, "_hub_mixin_config", None) or {})
    name = config.get("encoder_name")
    if name is None and isinstance(getattr(segmenter, "name", None), str) and "-" in segmenter.name:
        name = segmenter.name.split("-", 1)[1]  # smp names models "<arch>-<encoder>", e.g. "u-resnet18"
    return {"encoder_name": name, "encoder_weights": config.get("encoder_weights"),
            "encoder_depth": config.get("encoder_depth", getattr(encoder, "_depth", None))}


def _cached_hub_settings(encoder_name: str, weights: str) -> dict | None:
    """The encoder's preprocessing config.json from the local Hugging Face cache only (never the network)."""
    try:
        from huggingface_hub import hf_hub_download
        from segmentation_models_pytorch.encoders import encoders

        spec = encoders[encoder_name]["pretrained_settings"][weights]
        path = hf_hub_download(spec["repo_id"], "config.json", revision=spec.get("revision"), local_files_only=True)
        with open(path) as f:
            return json.load(f)
    except Exception:  # not cached, unknown encoder, other smp layout: fall back to the table
        return None


def smp_preprocessing(segmenter: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) for RGB in [0, 1] that an smp model's encoder expects; ``None`` if not an smp model.

    Read offline: timm's pretrained config for ``tu-`` encoders, smp's cached hub config when present,
    else ImageNet statistics (the encoders whose weights smp ships use them, except a few listed here).
    """
    info = smp_encoder_info(segmenter)
    if info is None or not info["encoder_name"]:
        return None
    name = info["encoder_name"]
    if name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(name[3:])
            if cfg is not None and cfg.mean and cfg.std:
                return tuple(cfg.mean), tuple(cfg.std)
        except Exception:
            pass
        return IMAGENET_MEAN, IMAGENET_STD
    settings = _cached_hub_settings(name, info["encoder_weights"] or "imagenet")
    if settings and "mean" in settings and "std" in settings:
        scale = 1.0 if max(settings.get("input_range", [0, 1])) <= 1 else 255.0
        return (tuple(m / scale for m in settings["mean"]), tuple(s / scale for s in settings["std"]))
    if info["encoder_weights"] == "advprop":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    for prefix, stats in _NON_IMAGENET.items():
        if name.startswith(prefix):
            return stats
    return IMAGENET_MEAN, IMAGENET_STD


def smp_pad_multiple(segmenter: nn.Module) -> int | None:
    """``2 ** encoder_depth`` (the size multiple an smp encoder-decoder needs), ``None`` if not smp."""
    info = smp_encoder_info(segmenter)
    if info is None:
        return None
    if info["encoder_depth"]:
        return 2 ** int(info["encoder_depth"])
    stride = getattr(segmenter.encoder, "output_stride", None)
    return int(stride) if stride else None


def create_smp_model(arch: str = "Unet", encoder_name: str = "resnet18", classes: int = 1,
                     encoder_weights: str | None = None, **kwargs: Any) -> nn.Module:
    """An smp model built offline (``encoder_weights=None``: random encoder); e.g.
    ``create_smp_model("FPN", "resnet34", classes=11)``.

    smp downloads pretrained encoders from the Hugging Face hub, so any other ``encoder_weights`` is refused
    at once: download them yourself and ``model.encoder.load_state_dict(...)``, or call smp directly online.
    """
    if encoder_weights is not None:
        raise ValueError(
            f"encoder_weights={encoder_weights!r} makes smp download the {encoder_name} encoder from the Hugging "
            "Face hub; this helper builds offline: use encoder_weights=None (random encoder) and load weights "
            "you downloaded with model.encoder.load_state_dict(...), or build smp.<Arch>(...) yourself online"
        )
    smp = _import_smp()
    cls = getattr(smp, arch, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        archs = sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type) and n[0].isupper()
                       and issubclass(getattr(smp, n), nn.Module))
        raise ValueError(f"unknown smp architecture {arch!r}; available: {', '.join(archs)}")
    return cls(encoder_name=encoder_name, encoder_weights=None, classes=classes, **kwargs)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(..., H, W)`` at the bottom/right up to multiples of ``multiple``: reflect, or replicate where
    the image is too small to reflect."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class SegmenterAdapter(nn.Module):
    """RGB ``(B, 3, H, W)`` in [0, 1] -> :meth:`prepare` -> normalise -> pad -> ``segmenter`` -> outputs cropped
    to H, W: what a segmenter needs around it, with or without deraining (:class:`DerainSegmenter`).

    ``mean``/``std`` default to the smp encoder's preprocessing for smp models and to none (identity) for
    other modules (e.g. a TorchScript segmenter that normalises inside). ``pad_multiple`` defaults to
    ``2 ** encoder_depth`` for smp models and 1 otherwise. Every output tensor (also inside dicts, lists,
    tuples) whose last two dims equal the padded size is cropped back. Further arguments of ``forward`` are
    passed on to the segmenter.
    """

    def __init__(self, segmenter: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad_multiple: int | None = None) -> None:
        super().__init__()
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be an nn.Module, got {type(segmenter).__name__}")
        self.segmenter = segmenter
        known = smp_preprocessing(segmenter) if mean is None and std is None else None
        mean, std = (known if known else (mean, std))
        mean = (0.0, 0.0, 0.0) if mean is None else tuple(float(v) for v in mean)
        std = (1.0, 1.0, 1.0) if std is None else tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.pad_multiple = int(pad_multiple or smp_pad_multiple(segmenter) or 1)
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The image the segmenter sees, before normalisation (here: ``x`` itself)."""
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``x``: RGB in [0, 1]; further arguments go to the segmenter."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects RGB images (B, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        y = (self.prepare(x) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        y = pad_to_multiple(y, self.pad_multiple)
        padded = tuple(y.shape[-2:])
        out = self.segmenter(y, *args, **kwargs)

        def crop(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == padded:
                return t[..., :h, :w]
            return t

        return tree_map(crop, out) if padded != (h, w) else out


class DerainSegmenter(SegmenterAdapter):
    """RGB ``(B, 3, H, W)`` in [0, 1] -> derain -> normalise -> pad -> ``segmenter`` -> outputs cropped to H, W
    (:class:`SegmenterAdapter` with deraining).

    ``freeze_derainer=True``: the derainer gets no gradients and stays in eval mode through ``.train()``;
    ``False``: it trains end to end with the segmenter.

    ``gate="auto"`` (or a threshold) passes images without rain to the segmenter as they are
    (:mod:`jdnet_plugin.gate`); ``gate_stats`` counts them.
    """

    def __init__(self, segmenter: nn.Module, weights: WeightsSource = None, model: nn.Module | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 pad_multiple: int | None = None, freeze_derainer: bool = True, gate: GateSpec = None) -> None:
        super().__init__(segmenter, mean, std, pad_multiple)
        self.gate_threshold = gate_threshold(gate)
        self.gate_stats = GateStats()
        self.derainer = resolve_derainer(weights, model)
        self.freeze_derainer = freeze_derainer
        self.derainer.requires_grad_(not freeze_derainer)
        self.train(self.segmenter.training)

    def train(self, mode: bool = True) -> "DerainSegmenter":
        super().train(mode)
        if self.freeze_derainer:
            self.derainer.eval()
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.derain(x)

    def derain(self, x: torch.Tensor) -> torch.Tensor:
        return gated(self.derainer, x, self.gate_threshold, self._run, gate_stats=self.gate_stats)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_derainer:
            with torch.no_grad():
                return run_derainer(self.derainer, x)
        return run_derainer(self.derainer, x)
