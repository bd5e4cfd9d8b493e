"""Network architectures. The attention operations live in :mod:`jdnet_plugin.ops` (re-exported here)."""
from ..ops.window import (Aggregation, Subtraction, Subtraction2, aggregation, aggregation_unfold, position, subtraction,
                          subtraction2, unfold_reflect)
from .jdnet_arch import JDNet, JDNetConfig

__all__ = ["JDNet", "JDNetConfig", "Aggregation", "Subtraction", "Subtraction2", "aggregation", "aggregation_unfold",
           "position", "subtraction", "subtraction2", "unfold_reflect"]
