"""Checkpoints: this project's format (config + weights), the authors' layouts, and ``load_model``."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .archs import JDNet, JDNetConfig
from .errors import CheckpointError
from .registry import DEFAULT_WEIGHTS, list_weights, resolve_weights
from .utils.atomic import atomic_torch_save

__all__ = ["FORMAT", "CheckpointError", "cpu_state_dict", "save_checkpoint", "read_checkpoint", "split_checkpoint",
           "infer_config", "load_state_dict_checked", "load_model"]

FORMAT = "jdnet-plugin/1"


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DataParallel / DDP
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict, detached, on the CPU, without DataParallel's or torch.compile's wrappers."""
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"format", "config", "model", **extra}`` atomically; ``load_model`` needs no flags for it."""
    model = _unwrap(model)
    if not isinstance(model, JDNet):
        raise TypeError(f"save_checkpoint expects a JDNet, got {type(model).__name__}")
    return atomic_torch_save({"format": FORMAT, "config": model.config.to_dict(), "model": cpu_state_dict(model),
                              **extra}, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a dict")
    return dict(obj)


def split_checkpoint(obj: Mapping) -> tuple[JDNetConfig | None, dict[str, torch.Tensor]]:
    """Config (when stored) and a clean state_dict from any supported layout.

    Layouts: this project's ``{"format", "config", "model"}``; the authors' ``{"net", "clock_net",
    "opt_net"}``; a raw state_dict; each with or without DataParallel's ``module.`` prefix.
    """
    config = None
    if obj.get("format") == FORMAT:
        config, state = JDNetConfig.from_dict(obj["config"]), obj["model"]
    elif isinstance(obj.get("net"), Mapping):
        state = obj["net"]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            "no JDNet state_dict found: expected tensors, or a dict with 'model' (this project) or "
            f"'net' (the authors' code); top-level keys are {sorted(map(str, obj))[:8]}"
        )
    return config, state


_UNIT = re.compile(r"^derain_net\.units\.(\d+)\.")
_SCALE = re.compile(r"^derain_net\.units\.0\.res_list\.(\d+)\.")


def infer_config(state: Mapping[str, torch.Tensor]) -> JDNetConfig:
    """The architecture of a state_dict, read from its keys and shapes (the authors store no config)."""
    if "enterBlock.0.weight" not in state:
        raise CheckpointError("not a JDNet state_dict: it has no 'enterBlock.0.weight'")
    units = {int(m.group(1)) for k in state if (m := _UNIT.match(k))}
    scales = {int(m.group(1)) for k in state if (m := _SCALE.match(k))}
    sam = "derain_net.units.0.san.sam."
    self_attention = f"{sam}conv1.weight" in state
    cfg = dict(
        channels=state["enterBlock.0.weight"].shape[0],
        units=max(units) + 1 if units else 0,
        scales=max(scales) + 1 if scales else 0,
        self_attention=self_attention,
        self_calibration="derain_net.units.0.scn.conv3.weight" in state,
    )
    if self_attention:
        cfg.update(rel_planes=state[f"{sam}conv1.weight"].shape[0], mid_planes=state[f"{sam}conv3.weight"].shape[0],
                   weight_channels=state[f"{sam}conv_w.2.weight"].shape[0])
    try:
        return JDNetConfig(**cfg)
    except ValueError as e:
        raise CheckpointError(f"state_dict does not describe a valid JDNet ({cfg}): {e}") from e


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)``, but a mismatch is reported as a short list of what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{len(missing)} missing keys: {few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatches: {few(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def weights_file(source: str | os.PathLike) -> Path:
    """The checkpoint file of a path or a registered weights name (a shipped file's checksum checked); the one
    place where weights are resolved. ``FileNotFoundError`` says which when it is neither."""
    text = str(source)
    if Path(text).exists():
        return Path(text)
    if text in list_weights():
        return resolve_weights(text)
    registered = ", ".join(list_weights()) or "none"
    if text == DEFAULT_WEIGHTS:
        raise FileNotFoundError(f"no default weights are registered in this install (registered: {registered}); "
                                "pass a checkpoint path or a registered weights name (--weights, weights=)")
    hint = " (a registered weights name?)" if os.sep not in text and "." not in text else ""
    raise FileNotFoundError(f"no checkpoint at {text}{hint}; registered weights: {registered}")


def load_model(source: str | os.PathLike | Mapping = "default", device: str | torch.device | None = None) -> JDNet:
    """A JDNet in eval mode from a checkpoint path, a registered weights name, or a loaded dict.

    Checkpoints this project writes carry their config; the authors' checkpoints (raw state_dict or
    ``{"net": ...}``, with or without ``module.``) get their architecture inferred from the weights.
    """
    if isinstance(source, Mapping):
        obj, name = dict(source), "state_dict"
    else:
        path = weights_file(source)
        obj = read_checkpoint(path)
        name = f"checkpoint {path}" if Path(source).exists() else f"weights {str(source)!r} ({path})"
    try:
        config, state = split_checkpoint(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from e
    try:
        config = config or infer_config(state)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from e
    model = JDNet(config)
    load_state_dict_checked(model, state, name)
    model.eval()
    return model.to(device) if device is not None else model
