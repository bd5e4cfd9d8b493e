"""JDNet's operations, each defined once: the attention over ``k x k`` windows (:mod:`.window`, functions and
modules, differentiable), the fused operations of the inference path (:mod:`.fused`), and the native CPU kernels
behind some of them (:mod:`.native`, compiled on first use; ``JDNET_NATIVE=0`` turns them off and PyTorch
computes the same). ``jdnet::shift_aggregate`` (with its backward, ``jdnet::shift_aggregate_backward``) and
``jdnet::san_bottleneck`` are ``torch.library`` operators with fake implementations. The module path, which
training, ``torch.compile`` and ``torch.export`` run, reaches the first: they see it as one operation; the
eager inference path (the blocks' ``forward_fused``) calls the second.
"""
from .fused import SLOPE, san_bottleneck, sam_attention_banded
from .window import (Aggregation, Subtraction, Subtraction2, aggregation, aggregation_unfold, position, shift_aggregate,
                     shift_aggregate_backward, subtraction, subtraction2, unfold_reflect)

__all__ = ["SLOPE", "Aggregation", "Subtraction", "Subtraction2", "aggregation", "aggregation_unfold", "position",
           "shift_aggregate", "shift_aggregate_backward", "subtraction", "subtraction2", "unfold_reflect", "san_bottleneck",
           "sam_attention_banded"]
