"""Realistic synthetic rain: streak layers plus haze, as a function (:func:`add_rain`), a transform
(:class:`RainSynthesis`) and calibrated presets (:data:`PRESETS`: ``light`` ~ Rain100L, ``heavy`` ~ Rain100H)."""
from .params import PRESETS, PRESETS_FILE, Haze, RainParams, StreakLayer, load_presets
from .synthesis import add_rain, make_generator, rain_layer
from .transforms import RainSynthesis

__all__ = ["RainParams", "StreakLayer", "Haze", "PRESETS", "PRESETS_FILE", "load_presets", "add_rain",
           "make_generator", "rain_layer", "RainSynthesis"]
