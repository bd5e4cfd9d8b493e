"""Weight averaging: several checkpoints of one architecture made into one (a "model soup", as timm's
``avg_checkpoints.py`` does), e.g. runs of one recipe with different seeds, fine-tuned from the same weights."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch

from .archs import JDNet
from .checkpoint import load_model
from .errors import CheckpointError

__all__ = ["check_coefficients", "average_state_dicts", "average_models"]


def check_coefficients(coefficients: Sequence[float] | None, count: int) -> list[float]:
    """``coefficients`` as floats (default: ``count`` ones); ``ValueError`` unless there is one finite,
    non-negative coefficient per source, not all zero."""
    coefs = [1.0] * count if coefficients is None else [float(w) for w in coefficients]
    if len(coefs) != count or not all(math.isfinite(w) and w >= 0 for w in coefs) or sum(coefs) <= 0:
        raise ValueError(f"need one finite, non-negative coefficient per source ({count}), not all zero; got {coefs}")
    return coefs


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]],
                        coefficients: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor weighted by ``coefficients`` (normalised to sum to 1; default
    equal); other tensors (BatchNorm's step counters) are taken from the first. Keys and shapes must agree."""
    if not states:
        raise ValueError("nothing to average: no state_dicts given")
    coefs = check_coefficients(coefficients, len(states))
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(first):
            odd = sorted(set(s) ^ set(first))[:4]
            raise ValueError(f"state_dict {i} has other keys than state_dict 0 (e.g. {odd})")
        bad = [k for k in first if s[k].shape != first[k].shape]
        if bad:
            raise ValueError(f"state_dict {i} differs from state_dict 0 in the shape of {bad[:4]}")
    total = sum(coefs)
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = sum(s[k].double() * (w / total) for s, w in zip(states, coefs)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def average_models(sources: Sequence[str | os.PathLike], coefficients: Sequence[float] | None = None) -> JDNet:
    """A JDNet holding the weighted mean of the weights of ``sources`` (checkpoint paths or registered names),
    which must all be one architecture; in eval mode, on the CPU."""
    if not sources:
        raise ValueError("nothing to average: no checkpoints given")
    models = [load_model(s, device="cpu") for s in sources]
    for src, m in zip(sources[1:], models[1:]):
        if m.config != models[0].config:
            raise CheckpointError(f"{src} is a model with {m.config.to_dict()}, but {sources[0]} is "
                                  f"{models[0].config.to_dict()}: only one architecture can be averaged")
    out = JDNet(models[0].config)
    out.load_state_dict(average_state_dicts([m.state_dict() for m in models], coefficients))
    return out.eval()
