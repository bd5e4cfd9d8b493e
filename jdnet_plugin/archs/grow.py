"""Function-preserving growth of a trained JDNet (Net2Net's "deeper" and "wider").

A deeper chain starts from a trained shallower one computing exactly the same image: the first units
keep their weights, each new unit starts as a copy of the last trained unit, and each new dense fusion
starts as the last trained fusion with zero weights on the features the chain has gained since, so its
output, and thus the exit block's input, is unchanged. Training then opens the new units through those
zero weights (their gradients are not zero).

A wider model keeps every trained channel where its layer's layout puts it (concatenations of blocks of
channels, the two halves of self-calibration, the attention's relation planes before its position planes).
The new channels start with the wider model's fresh initialisation, except for their weights into trained
channels, which start at zero: the trained channels, and so the image, are computed exactly as before, and
training opens the new channels through those zero weights.
"""
from __future__ import annotations

import re
from dataclasses import replace

import torch

from .jdnet_arch import JDNet, JDNetConfig

__all__ = ["deepen", "widen", "widened_config"]


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


def _blocks(n: int, old: int, new: int) -> torch.Tensor:
    """Where the channels of ``n`` concatenated blocks of ``old`` channels go in blocks of ``new``."""
    return torch.cat([torch.arange(old) + j * new for j in range(n)])


def _channel_maps(old: JDNetConfig, new: JDNetConfig) -> list[tuple[re.Pattern, torch.Tensor, torch.Tensor]]:
    """(key pattern, output map, input map) for every tensor of ``old``: where each trained channel goes."""
    c, r, m = torch.arange(old.channels), torch.arange(old.rel_planes), torch.arange(old.mid_planes)
    h, s = torch.arange(old.channels // 2), torch.arange(old.weight_channels)
    two, rgb = torch.arange(2), torch.arange(3)
    unit = r"derain_net\.units\.\d+\."
    rules = [
        (r"enterBlock\.0\.", c, rgb),
        (r"exitBlock\.0\.", rgb, c),
        (unit + r"san\.bn1\.", c, c),
        (unit + r"san\.sam\.conv[12]\.", r, c),
        (unit + r"san\.sam\.conv3\.", m, c),
        (unit + r"san\.sam\.conv_w\.1\.", r, torch.cat([r, new.rel_planes + two])),  # relation, then position
        (unit + r"san\.sam\.conv_w\.2\.", s, r),
        (unit + r"san\.sam\.conv_p\.", two, two),
        (unit + r"san\.bn2\.", m, m),
        (unit + r"san\.conv\.", c, m),
        (unit + r"res_list\.\d+\.(convert|res)\.\d+\.", c, c),
        (unit + r"conv11\.0\.", c, _blocks(old.scales + 1, old.channels, new.channels)),
        (unit + r"scn\.conv1_[ab]\.", h, c),
        (unit + r"scn\.(k1|scconv\.k\d)\.\d+\.", h, h),
        (unit + r"scn\.conv3\.", c, _blocks(2, old.channels // 2, new.channels // 2)),
        *((rf"derain_net\.conv1x1\.{i}\.0\.", c, _blocks(i + 2, old.channels, new.channels))
          for i in range(old.units)),
    ]
    return [(re.compile(p + r"(weight|bias|running_mean|running_var|num_batches_tracked)$"), o, i)
            for p, o, i in rules]


def widened_config(cfg: JDNetConfig, channels: int) -> JDNetConfig:
    """``cfg`` with ``channels`` and the attention planes derived from them, as :func:`widen` builds it."""
    return replace(cfg, channels=channels, rel_planes=None, mid_planes=None, weight_channels=None)


def widen(model: JDNet, channels: int) -> JDNet:
    """A copy of ``model`` with ``channels`` feature channels (at least as many as it has; the attention's
    relation and value planes grow with them as the config derives them, its weight maps must stay as many)
    and the same output."""
    cfg = model.config
    if channels < cfg.channels:
        raise ValueError(f"widen: the model has {cfg.channels} channels; cannot widen it to {channels}")
    new_cfg = widened_config(cfg, channels)
    if new_cfg.rel_planes < cfg.rel_planes or new_cfg.mid_planes < cfg.mid_planes:
        raise ValueError(f"widen: the model's attention planes ({cfg.rel_planes}, {cfg.mid_planes}) are more than "
                         f"{channels} channels derive ({new_cfg.rel_planes}, {new_cfg.mid_planes})")
    if new_cfg.weight_channels != cfg.weight_channels:
        raise ValueError(f"widen: with {channels} channels the attention would have {new_cfg.weight_channels} "
                         f"weight maps instead of {cfg.weight_channels}, which changes what the trained channels "
                         "compute; choose a width with as many")
    grown = JDNet(new_cfg)
    grown.set_attention_impl(model.impl).inference_dtype = model.inference_dtype
    rules = _channel_maps(cfg, new_cfg)
    grown_state = grown.state_dict()
    for key, value in model.state_dict().items():
        maps = next(((o, i) for pattern, o, i in rules if pattern.match(key)), None)
        if maps is None:
            raise ValueError(f"widen: no channel layout is known for {key}")
        target = grown_state[key]
        out_map, in_map = maps
        if value.dim() == 0:  # BatchNorm's step counter
            target.copy_(value)
        elif value.dim() == 1:  # biases, BatchNorm's affine and statistics
            target[out_map] = value.to(target)
        else:  # (out, in, kh, kw): trained -> trained as trained, new -> trained zero, -> new fresh
            target[out_map] = 0
            target[out_map[:, None], in_map[None, :]] = value.to(target)
    grown.load_state_dict(grown_state)
    first = next(model.parameters())
    return grown.to(device=first.device, dtype=first.dtype).train(model.training)
