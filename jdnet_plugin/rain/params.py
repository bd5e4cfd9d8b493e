"""Rain parameters: streak layers, optional haze, and the named presets (from ``configs/rain_presets.yaml``)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = ["Range", "StreakLayer", "Haze", "RainParams", "PRESETS", "PRESETS_FILE", "load_presets",
           "resolve_preset"]

# A number, or a (low, high) pair drawn uniformly for each image (streak group, or drop for brightness).
Range = Union[float, tuple[float, float]]

PRESETS_FILE = Path(__file__).resolve().parents[1] / "configs" / "rain_presets.yaml"


def _as_range(value: Any, name: str, low: float = float("-inf"), high: float = float("inf")) -> Range:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a [low, high] pair, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ValueError(f"{name}: low {lo} is above high {hi}")
    else:
        lo = hi = float(value)
    if lo < low or hi > high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return lo if lo == hi else (lo, hi)


def _scale(value: Range, factor: float) -> Range:
    return (value[0] * factor, value[1] * factor) if isinstance(value, tuple) else value * factor


@dataclass(frozen=True)
class StreakLayer:
    """One layer of rain streaks (one depth plane), drawn as ``directions`` groups of parallel streaks.

    Lengths and widths are in pixels; angles in degrees from vertical, positive leaning right
    (the top of the streak to the right of its bottom).
    """

    density: float            # fraction of pixels where a streak starts
    length: Range = 25.0      # streak length, drawn per group
    width: Range = 1.0        # streak width (sub-pixel widths give fainter lines), drawn per group
    angle: Range = 0.0        # the layer's direction, drawn per image
    angle_jitter: float = 0.0  # each group's direction differs from the layer's by up to this much
    directions: int = 1       # number of streak groups with their own direction and length
    blur: float = 0.0         # Gaussian blur sigma (pixels) of the streaks: motion/defocus softness
    brightness: Range = 0.8   # peak opacity of one streak, drawn per drop

    def __post_init__(self) -> None:
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must lie in [0, 1], got {self.density}")
        for name, low, high in (("length", 1.0, float("inf")), ("width", 0.05, float("inf")),
                                ("angle", -90.0, 90.0), ("brightness", 0.0, 1.0)):
            object.__setattr__(self, name, _as_range(getattr(self, name), name, low, high))
        if self.angle_jitter < 0 or self.blur < 0:
            raise ValueError("angle_jitter and blur must be >= 0")
        if int(self.directions) != self.directions or self.directions < 1:
            raise ValueError(f"directions must be a positive integer, got {self.directions}")
        object.__setattr__(self, "directions", int(self.directions))

    def scaled(self, factor: float) -> "StreakLayer":
        return dataclasses.replace(self, length=_scale(self.length, factor), width=_scale(self.width, factor),
                                   blur=self.blur * factor)


@dataclass(frozen=True)
class Haze:
    """A veil of accumulated rain: ``I * t + A * (1 - t)`` with atmospheric light A and transmission t."""

    atmospheric_light: Range = 0.85  # drawn per image
    transmission: Range = 0.8        # drawn per image
    variation: float = 0.0           # std of a smooth, low-frequency modulation of the transmission

    def __post_init__(self) -> None:
        object.__setattr__(self, "atmospheric_light",
                           _as_range(self.atmospheric_light, "atmospheric_light", 0.0, 1.0))
        object.__setattr__(self, "transmission", _as_range(self.transmission, "transmission", 0.0, 1.0))
        if self.variation < 0:
            raise ValueError("variation must be >= 0")


@dataclass(frozen=True)
class RainParams:
    """Rain to add: streak layers (far to near), then an optional haze veil applied beneath them."""

    layers: tuple[StreakLayer, ...] = field(default_factory=lambda: (StreakLayer(density=0.004),))
    haze: Haze | None = None

    def __post_init__(self) -> None:
        layers = tuple(StreakLayer(**layer) if isinstance(layer, dict) else layer for layer in self.layers)
        if not all(isinstance(layer, StreakLayer) for layer in layers):
            raise TypeError("layers must be StreakLayer instances or dicts of their fields")
        object.__setattr__(self, "layers", layers)
        if isinstance(self.haze, dict):
            object.__setattr__(self, "haze", Haze(**self.haze))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RainParams":
        unknown = set(d) - {"layers", "haze"}
        if unknown:
            raise ValueError(f"unknown rain parameter(s): {', '.join(sorted(unknown))}")
        return cls(layers=tuple(d.get("layers", ())), haze=d.get("haze"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def scaled(self, factor: float) -> "RainParams":
        """The same rain for an image ``factor`` times larger (lengths, widths and blur scaled)."""
        if factor <= 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        return dataclasses.replace(self, layers=tuple(layer.scaled(factor) for layer in self.layers))


def load_presets(path: str | os.PathLike = PRESETS_FILE) -> dict[str, RainParams]:
    """Named :class:`RainParams` from a YAML file mapping name -> ``{layers: [...], haze: {...}}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read rain presets ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of preset names to rain parameters")
    try:
        return {str(name): RainParams.from_dict(spec) for name, spec in data.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


PRESETS: dict[str, RainParams] = load_presets()

# Not a RainParams of its own: each image gets one of these presets, chosen at random.
MIXED = ("light", "heavy")


def resolve_preset(preset: "str | RainParams") -> "RainParams | tuple[str, ...]":
    """A :class:`RainParams`, or for ``"mixed"`` the names to choose from per image."""
    if isinstance(preset, RainParams):
        return preset
    if preset == "mixed":
        return MIXED
    if preset not in PRESETS:
        raise KeyError(f"unknown rain preset {preset!r}; known: {', '.join(sorted(PRESETS))}, mixed")
    return PRESETS[preset]
