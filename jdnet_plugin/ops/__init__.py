"""JDNet's operations, each defined once: the attention over ``k x k`` windows (:mod:`.window`, functions and
modules, differentiable), the fused operations of the inference path (:mod:`.fused`), and the native CPU kernels
behind some of them (:mod:`.native`, compiled on first use; ``JDNET_NATIVE=0`` turns them off and PyTorch
computes the same). ``jdnet::shift_aggregate`` and ``jdnet::san_bottleneck`` are ``torch.library`` operators
with fake implementations, so ``torch.compile`` and ``torch.export`` see them as single operations.
"""
from .fused import SLOPE, san_bottleneck, sam_attention_banded
from .window import (Aggregation, Subtraction, Subtraction2, aggregation, aggregation_unfold, position, shift_aggregate,
                     subtraction, subtraction2, unfold_reflect)

__all__ = ["SLOPE", "Aggregation", "Subtraction", "Subtraction2", "aggregation", "aggregation_unfold", "position",
           "shift_aggregate", "subtraction", "subtraction2", "unfold_reflect", "san_bottleneck",
           "sam_attention_banded"]
