"""Training configuration: :class:`TrainConfig`, built once from ``configs/train_default.yaml`` <- a user YAML
file <- command-line overrides, and validated as it is built."""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..losses import LOSS_NAMES, parse_loss

__all__ = ["DEFAULT_CONFIG", "CHOICES", "ConfigError", "TrainConfig", "default_config", "load_config",
           "merge_config", "config_differences", "RESUMABLE_CHANGES"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_default.yaml"

# Keys that may differ between a run and its resumption (they change neither the model nor the data stream).
RESUMABLE_CHANGES = frozenset({"out", "device", "workers", "val", "val_max", "save_every", "snapshot_every",
                               "val_every", "log_every", "tensorboard", "progress", "attention", "cache", "amp",
                               "channels_last", "threads", "init"})  # init: a resume loads latest.pt instead


# The settings with a fixed set of values (the CLI offers the same; rain presets and model presets come from
# their registries).
CHOICES: dict[str, tuple] = {
    "loss": LOSS_NAMES,  # or a weighted sum of them, "ssim+0.5*l1" (losses.parse_loss)
    "amp": ("auto", "none", "bf16", "fp16"),
    "attention": ("fast", "reference"),
    "format": ("paired", "side-by-side", "clean"),
}


class ConfigError(ValueError):
    """An invalid training configuration, or one that does not match the run being resumed."""


def default_config() -> dict[str, Any]:
    """The defaults (``configs/train_default.yaml``, the authors' recipe) as a plain mapping."""
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        return yaml.safe_load(f)


_DEFAULTS = default_config()


def _defaults_from_yaml(cls: type) -> type:
    """Each annotated field's default is the YAML file's value (the one place the defaults are written)."""
    for name in cls.__annotations__:
        value = _DEFAULTS[name]
        setattr(cls, name, field(default_factory=lambda v=value: copy.deepcopy(v))
                if isinstance(value, (list, dict)) else value)
    return cls


@dataclass(frozen=True)
@_defaults_from_yaml
class TrainConfig:
    """The settings of one training run (their meaning: ``configs/train_default.yaml``), checked when built.

    >>> TrainConfig(preset="jdnet-lite", data=["train/"], synthetic_rain="broad").steps is None
    True
    """

    # the model
    preset: str
    model: dict[str, Any]
    init: str | None
    attention: str
    # the data
    data: list[str]
    format: str | None
    pair_dirs: list[str] | None
    synthetic_rain: str | None
    clean_fraction: float
    render_scale: float | list[float]
    # validation
    val: str | None
    val_max: int | None
    # crops and their loading
    patch_size: int
    batch_size: int
    hflip: bool
    vflip: bool
    rot90: bool
    cache: bool
    workers: int
    # optimisation
    steps: int | None
    loss: str
    lr: float
    milestones: list[float]
    gamma: float
    ema_decay: float
    # where it runs
    seed: int
    device: str
    amp: str
    channels_last: bool | str
    threads: int | None
    # output
    out: str
    save_every: int
    snapshot_every: int
    val_every: int
    log_every: int
    tensorboard: bool
    progress: bool

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], source: str = "settings") -> TrainConfig:
        """The defaults updated by ``settings`` (unknown keys are errors)."""
        return cls(**merge_config(default_config(), dict(settings), source))

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML- and ``torch.load(weights_only=True)``-safe values (config.yaml, checkpoints)."""
        return copy.deepcopy(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


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


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The defaults, updated by the YAML file ``path`` and then by ``overrides``; validated."""
    cfg = default_config()
    if path is not None:
        cfg = merge_config(cfg, _read_yaml(path), str(path))
    if overrides:
        cfg = merge_config(cfg, dict(overrides), "command-line overrides")
    return TrainConfig(**cfg)


def _choice(key: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}, got {value!r}")


def _positive_int(key: str, v: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise ConfigError(f"{key} must be an integer >= {0 if allow_zero else 1}, got {v!r}")


def _number(key: str, v: Any, low: float, high: float = float("inf"), open_low: bool = False) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (low < v if open_low else low <= v) or v > high:
        raise ConfigError(f"{key} must be a number in {'(' if open_low else '['}{low}, {high}], got {v!r}")


def _validate(cfg: TrainConfig) -> None:
    """Check types and choices; normalise ``data`` to a list of path strings and ``init`` to an absolute path."""
    from ..rain import list_rain_presets
    from ..registry import list_models

    if cfg.preset not in list_models():
        raise ConfigError(f"unknown preset {cfg.preset!r}; registered: {', '.join(list_models())}")
    if not isinstance(cfg.model, dict):
        raise ConfigError(f"model must be a mapping of JDNetConfig parameters, got {cfg.model!r}")
    data = [cfg.data] if isinstance(cfg.data, (str, os.PathLike)) else cfg.data
    object.__setattr__(cfg, "data", [str(p) for p in (data or [])])
    for key in ("batch_size", "patch_size", "save_every", "val_every", "log_every"):
        _positive_int(key, getattr(cfg, key))
    for key in ("steps", "val_max", "threads"):
        _positive_int(key, getattr(cfg, key), allow_none=True)
    for key in ("workers", "snapshot_every"):
        _positive_int(key, getattr(cfg, key), allow_zero=True)
    for key in ("amp", "attention"):
        _choice(key, getattr(cfg, key), CHOICES[key])
    try:
        parse_loss(cfg.loss)
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from None
    _choice("channels_last", cfg.channels_last, ("auto", True, False))
    for key in ("hflip", "vflip", "rot90", "cache", "tensorboard", "progress"):
        _choice(key, getattr(cfg, key), (True, False))
    _choice("synthetic_rain", cfg.synthetic_rain, (None, *list_rain_presets()))
    _choice("format", cfg.format, (None, *CHOICES["format"]))
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    _number("lr", cfg.lr, 0, open_low=True)
    _number("gamma", cfg.gamma, 0, open_low=True)
    _number("ema_decay", cfg.ema_decay, 0, 1)
    if cfg.ema_decay == 1:
        raise ConfigError("ema_decay must be below 1 (1 would keep the first weights forever); 0 turns it off")
    _number("clean_fraction", cfg.clean_fraction, 0, 1)
    if cfg.clean_fraction and cfg.synthetic_rain is None and cfg.format != "clean":
        raise ConfigError("clean_fraction needs synthetic_rain (it leaves some clean crops without rain)")
    from ..data import DatasetError, scale_range

    try:
        scale = scale_range(cfg.render_scale)
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    if scale != (1.0, 1.0) and cfg.synthetic_rain is None and cfg.format != "clean":
        raise ConfigError("render_scale needs synthetic_rain (it is the scale the rain is drawn at)")
    ms = cfg.milestones
    if not isinstance(ms, list) or not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in ms):
        raise ConfigError(f"milestones must be a list of fractions of the steps in (0, 1], got {ms!r}")
    for key in ("device", "out"):
        if not isinstance(getattr(cfg, key), (str, os.PathLike)):
            raise ConfigError(f"{key} must be a string, got {getattr(cfg, key)!r}")
    object.__setattr__(cfg, "out", str(cfg.out))
    for key in ("init", "val"):
        v = getattr(cfg, key)
        if v is not None and (not isinstance(v, (str, os.PathLike)) or not str(v).strip()):
            raise ConfigError(f"{key} must be {'a registered weights name or ' if key == 'init' else ''}a path, "
                              f"got {v!r}")
    if cfg.init is not None:  # a path is made absolute, so that a resume from elsewhere finds the same file
        object.__setattr__(cfg, "init", str(Path(cfg.init).resolve()) if Path(cfg.init).exists() else str(cfg.init))
    if cfg.val is not None:
        object.__setattr__(cfg, "val", str(cfg.val))
    if cfg.pair_dirs is not None and (not isinstance(cfg.pair_dirs, list) or len(cfg.pair_dirs) != 2):
        raise ConfigError(f"pair_dirs must be [rainy_subfolder, clean_subfolder], got {cfg.pair_dirs!r}")


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any] | TrainConfig) -> list[str]:
    """The settings that differ between a saved run and this one, other than :data:`RESUMABLE_CHANGES`.

    A setting the saved run predates counts as its default value (runs of older versions still resume)."""
    if isinstance(current, TrainConfig):
        current = current.to_dict()
    defaults = default_config()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    keys = sorted((set(saved) | set(current)) - RESUMABLE_CHANGES)
    return [f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
            for k in keys if saved.get(k) != current.get(k)]
