"""Fused operations of JDNet's inference path, which the blocks' ``forward_fused`` methods
(:mod:`jdnet_plugin.archs.jdnet_arch`) are built from: the same functions as the modules' ``forward``, with
less memory traffic (the CPU runs these layers memory-bound).

- Features live in ``channels_last``. On CPU (fp32) each convolution is one oneDNN call with what follows
  it fused (:func:`conv2d_post`): bias, LeakyReLU, a residual add or a gate's product; eval-mode
  BatchNorm is one multiply-add (:func:`bn_affine`, :func:`affine_lrelu`).
- Nearest upsampling commutes with 1x1 convolutions; partial sums are gathered up the pyramid through
  composed index maps (:func:`nearest_index`, :func:`compose_nearest`, :func:`add_gathered`).
- The attention without its native kernel runs on bands of rows whose ``k*k``-neighbour tensors stay in
  cache, reading the neighbours through strided views (:func:`sam_attention_banded`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import native
from .window import exporting, window_padding

__all__ = ["SLOPE", "BAND_PIXELS", "nhwc", "layout_of", "conv2d_post", "conv_post", "conv1x1", "Conv1x1", "bn_affine",
           "lrelu_bias", "sam_attention_banded", "position_conv", "nearest_index", "nearest_composes", "compose_nearest",
           "add_gathered", "autocast_on", "affine_lrelu", "san_bottleneck", "FUSION_COLUMNS"]

# LeakyReLU's slope everywhere in JDNet.
SLOPE = 0.2
# Pixels per band of the attention: its (C, k*k, band) temporaries must stay in cache.
BAND_PIXELS = 2048
# Output columns of one dense-fusion GEMM: narrower GEMMs (32 columns) run at half the rate here.
FUSION_COLUMNS = 128


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """A channels_last ``(B, C, H, W)`` tensor as its ``(B, H, W, C)`` storage (a view)."""
    return x.permute(0, 2, 3, 1)


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-d tensor stored channels_last (and not also contiguous, as one of a single channel
    or a single pixel is), else ``contiguous_format``."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) \
    if torch.backends.mkldnn.is_available() else None


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def conv2d_post(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0, stride: int = 1,
                *, lrelu: bool = False, add: torch.Tensor | None = None, mul: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x)``, then ``+ add`` or ``* mul``, then LeakyReLU if asked. On CPU in fp32 one oneDNN call
    with the extra operations fused (one pass over the output instead of two or three); elsewhere the
    same in steps."""
    other = add if add is not None else mul
    if (_POINTWISE is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not (lrelu and other is not None) and not autocast_on("cpu")):
        geometry = ([padding] * 2, [stride] * 2, [1, 1], 1)
        if other is None:
            return _POINTWISE(x, weight, bias, *geometry, "leaky_relu" if lrelu else "none",
                              [SLOPE] if lrelu else [], "")
        return _POINTWISE.binary(x, other, weight, bias, *geometry, "add" if add is not None else "mul",
                                 None, None, [], None)
    y = F.conv2d(x, weight, bias, stride, padding)
    if add is not None:
        y = y.add_(add)
    if mul is not None:
        y = y.mul_(mul)
    return F.leaky_relu_(y, SLOPE) if lrelu else y


def conv_post(conv: torch.nn.Conv2d, x: torch.Tensor, **post) -> torch.Tensor:
    """A square, zero-padded, ungrouped ``nn.Conv2d`` of this model through :func:`conv2d_post`."""
    return conv2d_post(x, conv.weight, conv.bias, conv.padding[0], conv.stride[0], **post)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 convolution, differentiable; ``weight`` ``(out, in)`` (a slice of a wider one) or ``(out, in, 1, 1)``.

    An fp32 CPU input is one GEMM over its pixels: batched over NCHW images, or over a channels_last tensor's
    ``(pixels, channels)`` storage where autograd records (a channels_last result); oneDNN's 1x1 convolution of
    these few channels took 2 to 4 times as long forward and backward. Where autograd does not record, channels_last
    goes to oneDNN's fused call; TorchScript tracing and ONNX export see a convolution."""
    w = weight.flatten(1)
    # A tensor contiguous in both layouts (1x1 pixels, one channel) is left to oneDNN as before.
    nchw = x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    nhwc_in = layout_of(x) == torch.channels_last
    recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, bias))
    gemm = x.device.type == "cpu" and x.dim() == 4 and x.dtype == w.dtype == torch.float32 and not autocast_on("cpu")
    if x.dim() == 4 and w.shape[1] != x.shape[1]:
        raise ValueError(f"conv1x1: weight of {w.shape[1]} input channels for an input of {x.shape[1]}")
    if exporting() or (recorded and not nchw and not (gemm and nhwc_in)):  # oneDNN's fused call has no backward
        return F.conv2d(x, w.reshape(*w.shape, 1, 1), bias)
    if gemm and nchw:
        n, c, h, wd = x.shape
        # The weight and bias broadcast over the batch as expanded views; autograd sums their gradients.
        mat, pixels = w.expand(n, -1, -1), x.view(n, c, h * wd)
        y = torch.bmm(mat, pixels) if bias is None else torch.baddbmm(bias.view(1, -1, 1).expand(n, -1, h * wd),
                                                                       mat, pixels)
        return y.view(n, -1, h, wd)
    if gemm and recorded:  # channels_last: one GEMM over its (pixels, channels) storage, channels_last out
        n, c, h, wd = x.shape
        rows = nhwc(x).reshape(-1, c)
        y = torch.mm(rows, w.t()) if bias is None else torch.addmm(bias, rows, w.t())
        return y.view(n, h, wd, -1).permute(0, 3, 1, 2)
    return conv2d_post(x, w.reshape(*w.shape, 1, 1).contiguous(), bias)


class Conv1x1(torch.nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` computed by :func:`conv1x1` (same parameters, same
    state_dict); ``impl = "reference"``: by ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reference = self.impl == "reference" or x.dim() != 4  # nn.Conv2d also takes an unbatched (C, H, W)
        return super().forward(x) if reference else conv1x1(x, self.weight, self.bias)


def dense_1x1(feats: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``cat(feats, 1) @ weight.T + bias`` without the concatenation: a 1x1 convolution over features kept as
    ``(pixels, channels)`` matrices, one GEMM per feature, differentiable. ``weight``: ``(out, sum of channels)``
    or its 1x1 convolution form."""
    w = weight.flatten(1)
    if w.shape[1] != sum(f.shape[1] for f in feats):
        raise ValueError(f"dense_1x1: weight of {w.shape[1]} input channels for features of "
                         f"{[f.shape[1] for f in feats]}")
    # In place after the first product: the running sum is not saved for backward, and a fresh (pixels, channels)
    # result per feature cost a copy of the sum each time. Not under autocast, which casts only out-of-place ops.
    in_place = bool(feats) and not autocast_on(feats[0].device.type)
    out, start = None, 0
    for f in feats:
        wf = w[:, start:start + f.shape[1]].t()
        if out is None:
            out = torch.mm(f, wf) if bias is None else torch.addmm(bias, f, wf)
        elif in_place:
            out.addmm_(f, wf)
        else:
            out = torch.addmm(out, f, wf)
        start += f.shape[1]
    return out


def bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An eval-mode BatchNorm as per-channel ``(scale, shift)``; None where it uses batch statistics."""
    if bn.training or bn.running_mean is None:
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def affine_lrelu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``lrelu(x * scale + shift)`` with per-channel ``scale`` and ``shift``, as one multiply-add."""
    view = (-1, 1, 1)
    return F.leaky_relu_(torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view)), SLOPE)


def sam_attention_banded(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, pos: torch.Tensor,
                         weight: torch.Tensor, kernel_size: int, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """SAM's attention (relation, folded ``conv_w``, softmax, aggregation) band by band (``band_pixels``
    per band), where the native bottleneck does not run.

    ``x1, x2``: ``(B, r, H, W)`` relation embeddings; ``x3``: ``(B, M, H, W)`` values; ``pos``:
    ``(1, 2, H, W)`` the position map after ``conv_p``; ``weight``: ``(S, r + 2)`` the product of
    ``conv_w``'s two 1x1 convolutions (its bias is constant over the window: the softmax cancels it).
    Returns ``(B, M, H, W)``.
    """
    pad = window_padding(x1, kernel_size)
    b, r, h, w = x1.shape
    m = x3.shape[1]
    s = weight.shape[0]
    kk = kernel_size * kernel_size
    dt = x1.dtype
    pos = pos.to(dt).expand(b, -1, -1, -1)
    weight = weight.to(dt)
    c = r + 2
    q1 = torch.cat([x1, pos], 1)
    q2 = F.pad(torch.cat([x2.to(dt), pos], 1), (pad,) * 4, mode="reflect")
    vp = F.pad(x3.to(dt), (pad,) * 4, mode="reflect")
    out = torch.empty(b, m, h, w, dtype=dt, device=x1.device)
    rows = max(1, min(h, band_pixels // w))
    # One scratch buffer for all bands: fresh multi-MB tensors per band cost page faults.
    scratch = torch.empty(b * (c + m) * kk * rows * w, dtype=dt, device=x1.device)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        n, k = (y1 - y0) * w, kernel_size
        # (B, C, k, k, rows, W) views of every neighbour: strided windows, no copies.
        win = q2[:, :, y0:y1 + 2 * pad].unfold(2, k, 1).unfold(3, k, 1).permute(0, 1, 4, 5, 2, 3)
        rel = scratch[:b * c * kk * n].view(b, c, k, k, y1 - y0, w)
        torch.sub(q1[:, :, None, None, y0:y1], win, out=rel)
        F.leaky_relu_(rel, SLOPE)
        logits = torch.bmm(weight.expand(b, -1, -1), rel.view(b, c, kk * n)).view(b, s, kk, n)
        att = logits.softmax(2).view(b, 1, s, k, k, y1 - y0, w)
        val = vp[:, :, y0:y1 + 2 * pad].unfold(2, k, 1).unfold(3, k, 1).permute(0, 1, 4, 5, 2, 3)
        prod = scratch[b * c * kk * n:b * (c + m) * kk * n].view(b, m // s, s, k, k, y1 - y0, w)
        torch.mul(val.view(b, m // s, s, k, k, y1 - y0, w), att, out=prod)
        torch.sum(prod, (3, 4), out=out[:, :, y0:y1].view(b, m // s, s, y1 - y0, w))
    return out


def position_conv(conv: torch.nn.Conv2d, h: int, w: int) -> torch.Tensor:
    """``conv(position(h, w))`` for the 1x1 ``conv_p``: its x and y terms are a row and a column, so one
    broadcast sum (the convolution module took milliseconds on this 2-channel map)."""
    wgt = conv.weight.flatten(1)
    lx = torch.linspace(-1.0, 1.0, w, device=wgt.device, dtype=wgt.dtype)
    ly = torch.linspace(-1.0, 1.0, h, device=wgt.device, dtype=wgt.dtype)
    pos = wgt[:, 0, None, None] * lx + wgt[:, 1, None, None] * ly[:, None]
    if conv.bias is not None:
        pos = pos + conv.bias[:, None, None]
    return pos[None]


def nearest_index(n_in: int, n_out: int, device: torch.device | str) -> torch.Tensor:
    """The source rows ``F.interpolate(mode="nearest")`` reads, computed by that same function."""
    src = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in, 1)
    return F.interpolate(src, size=(n_out, 1)).view(n_out).long()


@functools.lru_cache(maxsize=512)
def nearest_composes(n_in: int, n_mid: int, n_out: int) -> bool:
    """Whether nearest upsampling ``n_in -> n_mid -> n_out`` reads what ``n_in -> n_out`` does."""
    two_steps = nearest_index(n_in, n_mid, "cpu")[nearest_index(n_mid, n_out, "cpu")]
    return torch.equal(nearest_index(n_in, n_out, "cpu"), two_steps)


def compose_nearest(outer: torch.Tensor, inner: torch.Tensor, n_mid: int) -> torch.Tensor | None:
    """``g`` with ``g[outer] == inner`` (so that reading through ``outer`` then ``g`` equals reading
    through ``inner``), or None where no such map exists."""
    g = torch.zeros(n_mid, dtype=torch.long, device=outer.device)
    g[outer] = inner
    return g if torch.equal(g[outer], inner) else None


def gather_hw(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """``x[:, :, iy][:, :, :, ix]`` of a channels_last tensor, channels_last."""
    return nhwc(x).index_select(1, iy).index_select(2, ix).permute(0, 3, 1, 2)


def add_gathered(x: torch.Tensor, src: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``x + src[:, :, iy][:, :, :, ix]`` (channels_last), into ``out`` (``x`` itself for in place). Where the
    indices repeat each source pixel ``f`` times (``arange // f``: nearest upsampling by an integer factor),
    a broadcast add, no gather."""
    b, c, h, w = x.shape
    sh, sw = src.shape[-2:]
    fy, fx = h // sh, w // sw
    if out is None:
        out = torch.empty_like(x, memory_format=torch.channels_last)
    if h == fy * sh and w == fx * sw and x.is_contiguous(memory_format=torch.channels_last) \
            and out.is_contiguous(memory_format=torch.channels_last) \
            and torch.equal(iy, torch.arange(h, device=iy.device) // fy) \
            and torch.equal(ix, torch.arange(w, device=ix.device) // fx):
        torch.add(nhwc(x).view(b, sh, fy, sw, fx, c), nhwc(src)[:, :, None, :, None, :],
                  out=nhwc(out).view(b, sh, fy, sw, fx, c))
        return out
    return torch.add(x, gather_hw(src, iy, ix), out=out)


def lrelu_bias(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``lrelu(x + bias)`` of a ``(B, C, H, W)`` view of a channels-last matrix's columns, channels_last."""
    y = torch.add(x, bias.view(-1, 1, 1), out=torch.empty_like(x, memory_format=torch.channels_last))
    return F.leaky_relu_(y, SLOPE)


@torch.library.custom_op(
    "jdnet::san_bottleneck", mutates_args=(),
    schema="(Tensor x, Tensor? in_bias, Tensor bn1_scale, Tensor bn1_shift, Tensor proj_weight, Tensor proj_bias, "
           "Tensor pos, Tensor att_weight, Tensor bn2_scale, Tensor bn2_shift, Tensor out_weight, Tensor out_bias, "
           "int kernel_size, int band_pixels) -> Tensor")
def san_bottleneck(x: torch.Tensor, in_bias: torch.Tensor | None, bn1_scale: torch.Tensor, bn1_shift: torch.Tensor,
                   proj_weight: torch.Tensor, proj_bias: torch.Tensor, pos: torch.Tensor, att_weight: torch.Tensor,
                   bn2_scale: torch.Tensor, bn2_shift: torch.Tensor, out_weight: torch.Tensor, out_bias: torch.Tensor,
                   kernel_size: int, band_pixels: int) -> torch.Tensor:
    """JDNet's SAN bottleneck in eval mode, ``conv(lrelu(bn2(sam(lrelu(bn1(x)))))) + x``, of ``x`` or, where
    ``in_bias`` is given, of ``lrelu(x + in_bias)``; channels_last out. A ``torch.library`` operator: on CPU in
    fp32 the native kernel (one pass, :mod:`.native`), elsewhere PyTorch (:func:`sam_attention_banded`).

    ``x``: ``(B, C, H, W)``, any strides with contiguous channels; BatchNorms as per-channel (scale, shift);
    ``proj_weight``: ``conv1, conv2, conv3`` stacked ``(2R + M, C)``; ``pos``: ``(1, 2, H, W)`` after
    ``conv_p``; ``att_weight``: ``conv_w`` folded ``(S, R + 2)``; ``out_weight``: ``(C, M)``.
    """
    window_padding(x, kernel_size)
    if x.device.type == "cpu" and x.dtype == torch.float32 and not autocast_on("cpu"):
        out = torch.empty_like(x, memory_format=torch.channels_last)
        if native.san_bottleneck(nhwc(x), in_bias, (bn1_scale, bn1_shift), (proj_weight.contiguous(), proj_bias),
                                 pos.contiguous(), att_weight.contiguous(), (bn2_scale, bn2_shift),
                                 (out_weight, out_bias), kernel_size, SLOPE, nhwc(out)):
            return out
    # The result is accumulated into x's (fresh) channels_last copy.
    x = lrelu_bias(x, in_bias) if in_bias is not None else x.clone(memory_format=torch.channels_last)
    o = affine_lrelu(x, bn1_scale, bn1_shift)
    b, c, h, w = o.shape
    m = out_weight.shape[1]
    r = (proj_weight.shape[0] - m) // 2
    # NCHW planes for the attention: (2r + M, C) @ (C, HW) per image.
    y = torch.bmm(proj_weight.to(o.dtype).expand(b, -1, -1), nhwc(o).reshape(b, h * w, c).transpose(1, 2))
    y = y.add_(proj_bias[:, None]).view(b, -1, h, w)
    att = sam_attention_banded(y[:, :r], y[:, r:2 * r], y[:, 2 * r:], pos, att_weight, kernel_size, band_pixels)
    att = affine_lrelu(att, bn2_scale, bn2_shift)
    # conv (M -> C) + x, channels_last: x += (HW, M) @ (M, C) per image, in place.
    out = nhwc(x).view(b, h * w, c)
    out.baddbmm_(att.to(out.dtype).reshape(b, m, h * w).transpose(1, 2), out_weight.t().to(out.dtype).expand(b, -1, -1))
    out.add_(out_bias)
    return x


@san_bottleneck.register_fake
def _san_bottleneck_fake(x, in_bias, *params_and_sizes) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)
