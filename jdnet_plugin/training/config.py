"""Training configuration: ``configs/train_default.yaml`` <- a user YAML file <- command-line overrides."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..losses import LOSS_NAMES

__all__ = ["DEFAULT_CONFIG", "CHOICES", "ConfigError", "default_config", "load_config", "merge_config", "validate_config",
           "config_differences", "RESUMABLE_CHANGES"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_default.yaml"

# Keys that may differ between a run and its resumption (they change neither the model nor the data stream).
RESUMABLE_CHANGES = frozenset({"out", "device", "workers", "val", "val_max", "save_every", "snapshot_every",
                               "val_every", "log_every", "tensorboard", "progress", "attention", "cache", "amp",
                               "channels_last", "threads", "init"})  # init: a resume loads latest.pt instead


# The settings with a fixed set of values (the CLI offers the same; rain presets and model presets come from
# their registries).
CHOICES: dict[str, tuple] = {
    "loss": LOSS_NAMES,
    "amp": ("auto", "none", "bf16", "fp16"),
    "attention": ("fast", "reference"),
    "format": ("paired", "side-by-side", "clean"),
}


class ConfigError(ValueError):
    """An invalid training configuration, or one that does not match the run being resumed."""


def default_config() -> dict[str, Any]:
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not a {type(obj).__name__}")
    return obj


def merge_config(base: dict[str, Any], overrides: dict[str, Any], source: str = "overrides") -> dict[str, Any]:
    """``base`` updated by ``overrides`` (the ``model`` mapping is merged key by key); unknown keys are errors."""
    out = copy.deepcopy(base)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(base))}")
    for k, v in overrides.items():
        if k == "model" and isinstance(v, dict) and isinstance(out.get("model"), dict):
            out["model"] = {**out["model"], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, updated by the YAML file ``path`` and then by ``overrides``; validated."""
    cfg = default_config()
    if path is not None:
        cfg = merge_config(cfg, _read_yaml(path), str(path))
    if overrides:
        cfg = merge_config(cfg, overrides, "command-line overrides")
    return validate_config(cfg)


def _choice(cfg: dict, key: str, options: tuple) -> None:
    if cfg[key] not in options:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}, got {cfg[key]!r}")


def _positive_int(cfg: dict, key: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    v = cfg[key]
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise ConfigError(f"{key} must be an integer >= {0 if allow_zero else 1}, got {v!r}")


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check types and choices; normalise ``data`` to a list of paths. Returns ``cfg``."""
    from ..registry import list_models

    if cfg["preset"] not in list_models():
        raise ConfigError(f"unknown preset {cfg['preset']!r}; registered: {', '.join(list_models())}")
    if not isinstance(cfg["model"], dict):
        raise ConfigError(f"model must be a mapping of JDNetConfig parameters, got {cfg['model']!r}")
    if isinstance(cfg["data"], (str, os.PathLike)):
        cfg["data"] = [cfg["data"]]
    cfg["data"] = [str(p) for p in (cfg["data"] or [])]
    for key in ("batch_size", "patch_size", "save_every", "val_every", "log_every"):
        _positive_int(cfg, key)
    _positive_int(cfg, "steps", allow_none=True)
    _positive_int(cfg, "val_max", allow_none=True)
    _positive_int(cfg, "threads", allow_none=True)
    _positive_int(cfg, "workers", allow_zero=True)
    _positive_int(cfg, "snapshot_every", allow_zero=True)
    for key in ("loss", "amp", "attention"):
        _choice(cfg, key, CHOICES[key])
    _choice(cfg, "channels_last", ("auto", True, False))
    from ..rain import list_rain_presets

    _choice(cfg, "synthetic_rain", (None, *list_rain_presets()))
    _choice(cfg, "format", (None, *CHOICES["format"]))
    if not isinstance(cfg["lr"], (int, float)) or cfg["lr"] <= 0:
        raise ConfigError(f"lr must be a positive number, got {cfg['lr']!r}")
    cf = cfg["clean_fraction"]
    if not isinstance(cf, (int, float)) or isinstance(cf, bool) or not 0 <= cf <= 1:
        raise ConfigError(f"clean_fraction must be a number in [0, 1], got {cf!r}")
    if cf and cfg["synthetic_rain"] is None and cfg["format"] != "clean":
        raise ConfigError("clean_fraction needs synthetic_rain (it leaves some clean crops without rain)")
    ms = cfg["milestones"]
    if not isinstance(ms, list) or not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in ms):
        raise ConfigError(f"milestones must be a list of fractions of the steps in (0, 1], got {ms!r}")
    init = cfg["init"]
    if init is not None and (not isinstance(init, (str, os.PathLike)) or not str(init).strip()):
        raise ConfigError(f"init must be a registered weights name or a checkpoint path, got {init!r}")
    if init is not None:  # a path is made absolute, so that a resume from elsewhere finds the same file
        cfg["init"] = str(Path(init).resolve()) if Path(init).exists() else str(init)
    if cfg["pair_dirs"] is not None and (not isinstance(cfg["pair_dirs"], list) or len(cfg["pair_dirs"]) != 2):
        raise ConfigError(f"pair_dirs must be [rainy_subfolder, clean_subfolder], got {cfg['pair_dirs']!r}")
    return cfg


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ between a saved run and this one, other than :data:`RESUMABLE_CHANGES`.

    A setting the saved run predates counts as its default value (runs of older versions still resume)."""
    defaults = default_config()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    keys = sorted((set(saved) | set(current)) - RESUMABLE_CHANGES)
    return [f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
            for k in keys if saved.get(k) != current.get(k)]
