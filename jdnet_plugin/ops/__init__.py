"""JDNet's operations, each defined once: the attention over ``k x k`` windows (:mod:`.window`, functions and
modules, differentiable), the fused operations of the inference path and the training path's 1x1 convolutions
(:mod:`.fused`), and the native CPU kernels behind some of them (:mod:`.native`, compiled on first use;
``JDNET_NATIVE=0`` turns them off and PyTorch computes the same). ``jdnet::window_softmax`` (the attention's
weights), ``jdnet::shift_aggregate`` (their aggregation), each with its backward, and ``jdnet::san_bottleneck`` are
``torch.library`` operators with fake implementations. The module path, which training, ``torch.compile`` and
``torch.export`` run, reaches the first two: they see each as one operation; the eager inference path (the blocks'
``forward_fused``) calls the third.
"""
from .fused import SLOPE, Conv1x1, conv1x1, san_bottleneck, sam_attention_banded
from .window import (Aggregation, Subtraction, Subtraction2, aggregation, aggregation_unfold, attention_softmax,
                     position, shift_aggregate, shift_aggregate_backward, subtraction, subtraction2, unfold_reflect,
                     window_softmax, window_softmax_backward)

__all__ = ["SLOPE", "Aggregation", "Subtraction", "Subtraction2", "aggregation", "aggregation_unfold",
           "attention_softmax", "position", "shift_aggregate", "shift_aggregate_backward", "subtraction",
           "subtraction2", "unfold_reflect", "window_softmax", "window_softmax_backward", "Conv1x1", "conv1x1",
           "san_bottleneck", "sam_attention_banded"]
