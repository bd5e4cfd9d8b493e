"""Rain parameters: streak layers, optional haze, and the named presets (from ``configs/rain_presets.yaml``)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UnknownNameError

__all__ = ["Range", "StreakLayer", "NoiseStreaks", "StreakImages", "Haze", "Camera", "RainParams", "Mixture",
           "PRESETS", "PRESETS_FILE", "BLENDS", "load_presets", "resolve_preset", "list_rain_presets",
           "preset_digest", "preset_shares"]

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


def _check_fields(obj: Any, bounds: dict[str, tuple[float, float]]) -> None:
    """Normalise each named field to a :data:`Range` within its bounds; ``p`` must be a probability."""
    for name, (low, high) in bounds.items():
        object.__setattr__(obj, name, _as_range(getattr(obj, name), f"{type(obj).__name__}.{name}", low, high))
    if not 0.0 <= getattr(obj, "p", 1.0) <= 1.0:
        raise ValueError(f"{type(obj).__name__}.p must lie in [0, 1], got {obj.p}")


def _check_directions(layer: Any) -> None:
    """``angle_jitter >= 0``; ``directions`` a positive integer (stored as ``int``)."""
    if layer.angle_jitter < 0:
        raise ValueError(f"{type(layer).__name__}.angle_jitter must be >= 0, got {layer.angle_jitter}")
    if int(layer.directions) != layer.directions or layer.directions < 1:
        raise ValueError(f"{type(layer).__name__}.directions must be a positive integer, got {layer.directions}")
    object.__setattr__(layer, "directions", int(layer.directions))


def _scaled_streaks(layer: Any, factor: float) -> Any:
    """A streak layer for images ``factor`` times larger: lengths, widths and blur scaled."""
    return dataclasses.replace(layer, length=_scale(layer.length, factor), width=_scale(layer.width, factor),
                               blur=_scale(layer.blur, factor))


@dataclass(frozen=True)
class StreakLayer:
    """One layer of rain streaks (one depth plane), drawn as ``directions`` groups of parallel streaks.

    Lengths and widths are in pixels; angles in degrees from vertical, positive leaning right
    (the top of the streak to the right of its bottom).
    """

    density: Range            # fraction of pixels where a streak starts, per image
    length: Range = 25.0      # streak length, drawn per group
    width: Range = 1.0        # streak width (sub-pixel widths give fainter lines), drawn per group
    angle: Range = 0.0        # the layer's direction, drawn per image
    angle_jitter: float = 0.0  # each group's direction differs from the layer's by up to this much
    directions: int = 1       # number of streak groups with their own direction and length
    blur: Range = 0.0         # Gaussian blur sigma (pixels) of the streaks: motion/defocus softness, per image
    brightness: Range = 0.8   # peak opacity of one streak, drawn per drop
    p: float = 1.0            # probability that the layer is present in an image

    def __post_init__(self) -> None:
        _check_fields(self, {"density": (0.0, 1.0), "length": (1.0, float("inf")), "width": (0.05, float("inf")), "angle": (-90.0, 90.0),
                             "brightness": (0.0, 1.0), "blur": (0.0, float("inf"))})
        _check_directions(self)

    def scaled(self, factor: float) -> "StreakLayer":
        return _scaled_streaks(self, factor)


@dataclass(frozen=True)
class NoiseStreaks:
    """Noise-seeded streaks, the way most published benchmark rain was made: random noise thresholded to
    sparse seeds, widened by a Gaussian, motion-blurred along an angle, then brightened (levels) so that
    the brightest streaks reach ``brightness``. From sparse fine drizzle to dense bright heavy rain."""

    density: Range = 0.02       # fraction of pixels that seed a streak, per image
    length: Range = 30.0        # motion-blur length in pixels, per direction
    width: Range = 0.6          # Gaussian sigma of a seed (streak thickness), per image
    angle: Range = 0.0          # degrees from vertical, per image
    angle_jitter: float = 0.0   # each direction differs from the image's angle by up to this much
    directions: int = 1         # directions, each with its share of the seeds
    brightness: Range = 0.6     # opacity of the brightest streaks (the 99th percentile), per image
    gamma: Range = 1.0          # levels gamma (< 1: fuller, brighter streaks), per image
    blur: Range = 0.0           # Gaussian blur sigma of the whole layer (defocus), per image
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_fields(self, {"density": (0.0, 1.0), "length": (1.0, float("inf")), "width": (0.05, float("inf")),
                             "angle": (-90.0, 90.0), "brightness": (0.0, 1.0), "gamma": (0.05, 20.0),
                             "blur": (0.0, float("inf"))})
        _check_directions(self)

    def scaled(self, factor: float) -> "NoiseStreaks":
        return _scaled_streaks(self, factor)


@dataclass(frozen=True)
class StreakImages:
    """Photometrically rendered streaks (the Garg-Nayar database, as RainMix uses it): random crops of
    streak images, scaled, rotated and brightened, ``count`` of them mixed into one layer.

    ``root``: a folder of grey streak images on black; None means the ``JDNET_RAIN_STREAKS`` environment
    variable, else ``../shared/data/rain_streaks/garg_nayar`` next to the repository.
    """

    root: str | None = None
    count: Range = (1, 3)       # streak images mixed, per image (rounded)
    scale: Range = (0.5, 1.5)   # zoom of the streak image (larger: longer, thicker streaks), per image
    angle: Range = (-30, 30)    # rotation in degrees, per image
    brightness: Range = (0.5, 1.0)  # gain on the streak image, per image
    blur: Range = 0.0           # Gaussian blur sigma of the layer (defocus), per image
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_fields(self, {"count": (1, 64), "scale": (0.05, 20.0), "angle": (-180.0, 180.0),
                             "brightness": (0.0, 4.0), "blur": (0.0, float("inf"))})

    def scaled(self, factor: float) -> "StreakImages":
        return dataclasses.replace(self, scale=_scale(self.scale, factor), blur=_scale(self.blur, factor))


@dataclass(frozen=True)
class Haze:
    """A veil of accumulated rain: ``I * t + A * (1 - t)`` with atmospheric light A and transmission t.

    ``t`` varies smoothly over the image: a random low-frequency field (``variation``) and a depth-like
    ramp (``depth``: the top of the frame, farther away, is veiled more: ``t = t0 ** (1 + depth * d)``
    with ``d`` rising from 0 at the bottom to 1 at the top, tilted at random). ``A`` is grey, tinted per
    channel by up to ``tint``; ``desaturate`` removes that share of the colour beneath the veil.
    """

    atmospheric_light: Range = 0.85  # drawn per image
    transmission: Range = 0.8        # drawn per image
    variation: float = 0.0           # std of a smooth, low-frequency modulation of the transmission
    depth: Range = 0.0               # strength of the depth-like ramp, per image
    tint: float = 0.0                # per-channel spread of the atmospheric light
    desaturate: Range = 0.0          # colour lost under the veil, per image
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_fields(self, {"atmospheric_light": (0.0, 1.0), "transmission": (0.0, 1.0), "depth": (0.0, 10.0),
                             "desaturate": (0.0, 1.0)})
        if self.variation < 0 or self.tint < 0:
            raise ValueError("variation and tint must be >= 0")


@dataclass(frozen=True)
class Camera:
    """What the camera adds after the rain: slight blur of the whole frame, sensor noise (Gaussian,
    signal-dependent), sharpening (an unsharp mask, as phone and camera pipelines apply: bright streaks get
    dark flanks), JPEG compression. Blur, noise and sharpening are applied to the clean target as well (the
    derainer should remove rain, not the camera's doing); JPEG only to the rainy image."""

    blur: Range = 0.0            # Gaussian sigma of the frame, per image
    noise: Range = 0.0           # noise std at mid-grey, per image
    sharpen: Range = 0.0         # unsharp-mask amount (0: none), per image
    sharpen_sigma: Range = 1.0   # Gaussian sigma of the unsharp mask, per image
    jpeg: Range = 100.0          # JPEG quality (100: none), per image
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_fields(self, {"blur": (0.0, 10.0), "noise": (0.0, 0.5), "sharpen": (0.0, 5.0),
                             "sharpen_sigma": (0.05, float("inf")), "jpeg": (1.0, 100.0)})

    def scaled(self, factor: float) -> "Camera":
        return dataclasses.replace(self, blur=_scale(self.blur, factor),
                                   sharpen_sigma=_scale(self.sharpen_sigma, factor))


BLENDS = ("screen", "add", "either", "over")
_COMPONENTS = {"layers": StreakLayer, "noise_layers": NoiseStreaks, "image_layers": StreakImages}


@dataclass(frozen=True)
class RainParams:
    """Rain to add, composed of layers: a haze veil beneath (accumulation), streak sources over it
    (line-kernel ``layers``, ``noise_layers``, ``image_layers``; far to near, each present with its
    probability ``p``), then the camera. ``blend``: streaks over the image by a screen blend
    ``1 - (1 - I)(1 - R)``, by addition ``I + R`` (clipped; how benchmark rain was composited), either
    of the two, drawn per image, or ``over``: each streak layer occludes the scene, ``I (1 - R) + L R``, with
    ``L`` the drops' radiance (the scene's mean colour drawn part of the way to white): a drop refracts a
    wide view of the scene, so streaks brighten dark regions and can darken bright ones (Garg and Nayar)."""

    layers: tuple[StreakLayer, ...] = field(default_factory=lambda: (StreakLayer(density=0.004),))
    haze: Haze | None = None
    noise_layers: tuple[NoiseStreaks, ...] = ()
    image_layers: tuple[StreakImages, ...] = ()
    camera: Camera | None = None
    blend: str = "screen"

    def __post_init__(self) -> None:
        for name, cls in _COMPONENTS.items():
            items = tuple(cls(**x) if isinstance(x, dict) else x for x in getattr(self, name))
            if not all(isinstance(x, cls) for x in items):
                raise TypeError(f"{name} must be {cls.__name__} instances or dicts of their fields")
            object.__setattr__(self, name, items)
        for name, cls in (("haze", Haze), ("camera", Camera)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RainParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown rain parameter(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**{**{"layers": ()}, **d})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def scaled(self, factor: float) -> "RainParams":
        """The same rain for an image ``factor`` times larger (lengths, widths and blur scaled)."""
        if factor <= 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        scaled = {name: tuple(x.scaled(factor) for x in getattr(self, name)) for name in _COMPONENTS}
        camera = self.camera.scaled(factor) if self.camera is not None else None
        return dataclasses.replace(self, camera=camera, **scaled)

    def draw(self, generator: Any) -> "RainParams":
        return self


@dataclass(frozen=True)
class Mixture:
    """A preset that is one of several named presets (mixtures too) per image, chosen with the given weights.

    ``camera``: :class:`Camera` fields (a mapping, kept as sorted pairs) that replace those of the drawn
    preset's camera (a preset without a camera gets one of these fields alone): one camera setting, such as
    sharpening, over every kind of rain. ``over``: the share of images whose streaks occlude the scene (blend
    ``"over"``) instead of being composited by the drawn preset's blend.
    """

    choices: tuple[str, ...]
    weights: tuple[float, ...] = ()
    camera: "tuple[tuple[str, Any], ...] | dict[str, Any]" = ()
    over: float = field(default=0.0, repr=False)  # out of repr: the digests of mixtures without it stay

    def __post_init__(self) -> None:
        if isinstance(self.over, bool) or not isinstance(self.over, (int, float)) or not 0.0 <= self.over <= 1.0:
            raise ValueError(f"a mixture's over share must be a number in [0, 1], got {self.over!r}")
        object.__setattr__(self, "over", float(self.over))
        if not self.choices:
            raise ValueError("a mixture needs at least one preset")
        weights = tuple(float(w) for w in self.weights) or (1.0,) * len(self.choices)
        if len(weights) != len(self.choices) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"mixture weights {self.weights!r} do not match its presets {self.choices!r}")
        camera = dict(self.camera)
        checked = dataclasses.asdict(Camera(**camera))  # unknown fields and bad ranges fail here
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "camera", tuple((k, checked[k]) for k in sorted(camera)))

    def draw(self, generator: Any) -> RainParams:
        """The preset for one image, drawn from ``generator`` (a ``torch.Generator``)."""
        import torch

        if len(set(self.weights)) == 1:  # uniform: the draw the "mixed" preset always made
            i = int(torch.randint(len(self.choices), (1,), generator=generator, device=generator.device))
        else:
            w = torch.tensor(self.weights, dtype=torch.float64, device=generator.device)
            i = int(torch.multinomial(w, 1, generator=generator))
        params = resolve_preset(self.choices[i]).draw(generator)
        if self.camera:
            params = dataclasses.replace(params, camera=dataclasses.replace(params.camera or Camera(),
                                                                            **dict(self.camera)))
        if self.over and float(torch.rand(1, generator=generator, device=generator.device)) < self.over:
            params = dataclasses.replace(params, blend="over")
        return params

    def scaled(self, factor: float) -> "_ScaledMixture":
        return _ScaledMixture(self, factor)


@dataclass(frozen=True)
class _ScaledMixture:
    mixture: Mixture
    factor: float

    def draw(self, generator: Any) -> RainParams:
        return self.mixture.draw(generator).scaled(self.factor)

    def scaled(self, factor: float) -> "_ScaledMixture":
        return _ScaledMixture(self.mixture, self.factor * factor)


def load_presets(path: str | os.PathLike = PRESETS_FILE) -> dict[str, "RainParams | Mixture"]:
    """Named :class:`RainParams` from a YAML file mapping name -> ``{layers: [...], haze: {...}, ...}``,
    or :class:`Mixture` for ``{mix: {preset: weight, ...}}``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read rain presets ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of preset names to rain parameters")
    try:
        return {str(name): _preset(spec) for name, spec in data.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _preset(spec: Any) -> "RainParams | Mixture":
    if not isinstance(spec, dict):
        raise ValueError(f"a preset must be a mapping, got {spec!r}")
    if "mix" in spec:
        if not set(spec) <= {"mix", "camera", "over"} or not isinstance(spec["mix"], dict) \
                or not isinstance(spec.get("camera", {}), dict):
            raise ValueError(f"a mixture preset is {{mix: {{preset: weight, ...}}, camera: {{...}}, over: share}} "
                             f"(camera and over optional), got {spec!r}")
        return Mixture(tuple(spec["mix"]), tuple(spec["mix"].values()), tuple(spec.get("camera", {}).items()),
                       spec.get("over", 0.0))
    return RainParams.from_dict(spec)


PRESETS: dict[str, "RainParams | Mixture"] = load_presets()


def list_rain_presets() -> list[str]:
    """The names :func:`resolve_preset` accepts (``rain_presets.yaml``)."""
    return sorted(PRESETS)


def resolve_preset(preset: "str | RainParams | Mixture") -> "RainParams | Mixture":
    """The :class:`RainParams` or :class:`Mixture` of a preset name (or the object itself); both have
    ``draw(generator)`` giving the parameters of one image."""
    if isinstance(preset, (RainParams, Mixture, _ScaledMixture)):
        return preset
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown rain preset {preset!r}; known: {', '.join(list_rain_presets())}")
    for name in getattr(PRESETS[preset], "choices", ()):
        if name not in PRESETS:
            raise UnknownNameError(f"rain preset {preset!r} mixes {name!r}, which is not a preset")
    return PRESETS[preset]


def preset_shares(preset: "str | Mixture") -> dict[str, float]:
    """The share of images each single preset (not a mixture) is drawn for, nested mixtures multiplied out:
    ``preset_shares("broad-slant-torrent")["slant"]`` is 2/21. A single preset's name gives ``{name: 1.0}``."""
    def walk(preset: "str | Mixture", seen: tuple[str, ...]) -> dict[str, float]:
        if isinstance(preset, str) and preset in seen:
            raise ValueError(f"rain preset {preset!r} mixes itself ({' -> '.join(seen + (preset,))})")
        params = resolve_preset(preset)
        if not isinstance(params, Mixture):
            if not isinstance(preset, str):
                raise TypeError("preset_shares takes a preset name or a Mixture")
            return {preset: 1.0}
        seen += (preset,) if isinstance(preset, str) else ()
        shares: dict[str, float] = {}
        total = sum(params.weights)
        for name, weight in zip(params.choices, params.weights):
            for leaf, share in walk(name, seen).items():
                shares[leaf] = shares.get(leaf, 0.0) + share * weight / total
        return shares

    return walk(preset, ())


def preset_digest(preset: "str | RainParams | Mixture") -> str:
    """A short hash of a preset's parameters (a mixture's choices included): an edited preset gets another."""
    import hashlib

    def described(p: "RainParams | Mixture") -> list[str]:  # a mixture with its choices, nested ones too
        over = f" over={p.over}" if getattr(p, "over", 0.0) else ""
        return [repr(p) + over, *(line for c in getattr(p, "choices", ()) for line in described(resolve_preset(c)))]

    text = "\n".join(described(resolve_preset(preset)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
