"""Realistic synthetic rain, composed of layers: a veil of accumulated rain, streak sources (line kernels,
noise-seeded streaks, rendered streak images), camera effects. As functions (:func:`add_rain`,
:func:`add_rain_pair`), a transform (:class:`RainSynthesis`) and named presets (:data:`PRESETS`, from
``configs/rain_presets.yaml``; ``broad`` samples the whole range, for training)."""
from .files import file_rain, file_seed, parse_scale
from .params import (PRESETS, PRESETS_FILE, Camera, Haze, Mixture, NoiseStreaks, RainParams, StreakImages, StreakLayer,
                     list_rain_presets, load_presets, preset_digest, preset_shares)
from .sources import StreakImagesNotFound, image_streaks, noise_streaks
from .synthesis import (add_rain, add_rain_pair, check_rain_sources, draw_params, make_generator,
                        rain_layer)
from .transforms import RainSynthesis

__all__ = ["RainParams", "StreakLayer", "NoiseStreaks", "StreakImages", "Haze", "Camera", "Mixture", "PRESETS",
           "PRESETS_FILE", "load_presets", "list_rain_presets", "preset_digest", "preset_shares", "add_rain",
           "add_rain_pair", "check_rain_sources", "draw_params", "make_generator", "rain_layer", "noise_streaks",
           "image_streaks", "StreakImagesNotFound", "RainSynthesis", "file_rain", "file_seed", "parse_scale"]
