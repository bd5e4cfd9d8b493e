"""Function-preserving growth of a trained JDNet (Net2Net's "deeper" for the dense chain).

A deeper chain starts from a trained shallower one computing exactly the same image: the first units
keep their weights, each new unit starts as a copy of the last trained unit, and each new dense fusion
starts as the last trained fusion with zero weights on the features the chain has gained since, so its
output, and thus the exit block's input, is unchanged. Training then opens the new units through those
zero weights (their gradients are not zero).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .jdnet_arch import JDNet

__all__ = ["deepen"]


def deepen(model: JDNet, units: int) -> JDNet:
    """A copy of ``model`` with ``units`` joint units (at least as many as it has) and the same output."""
    cfg = model.config
    if units < cfg.units:
        raise ValueError(f"deepen: the model has {cfg.units} units; cannot deepen it to {units}")
    grown = JDNet(replace(cfg, units=units))
    grown.set_attention_impl(model.impl).inference_dtype = model.inference_dtype
    state = model.state_dict()
    grown_state = grown.state_dict()
    last = cfg.units - 1
    c = cfg.channels
    for key, value in grown_state.items():
        if key in state and state[key].shape == value.shape:
            grown_state[key] = state[key].clone()
            continue
        # The rest: derain_net.units.<i>.* or derain_net.conv1x1.<i>.0.{weight,bias} of a new unit i
        parts = key.split(".")
        if parts[:2] not in (["derain_net", "units"], ["derain_net", "conv1x1"]) or int(parts[2]) <= last:
            raise ValueError(f"deepen: {key} of the deeper model has no counterpart in the model")
        source = state[".".join([*parts[:2], str(last), *parts[3:]])]  # the same tensor of the last unit
        if parts[1] == "conv1x1" and parts[-1] == "weight":  # (c, (i + 2) c, 1, 1): its columns, zeros after them
            grown_state[key] = torch.zeros_like(value)
            grown_state[key][:, :(last + 2) * c] = source
        else:
            grown_state[key] = source.clone()
    grown.load_state_dict(grown_state)
    first = next(model.parameters())
    return grown.to(device=first.device, dtype=first.dtype).train(model.training)
