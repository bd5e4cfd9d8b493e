"""The no-grad forward of JDNet: the same function as the modules' ``forward``, computed with less
memory traffic (the CPU runs these layers memory-bound).

- Features live in ``channels_last``. On CPU (fp32) each convolution is one oneDNN call with what follows
  it fused: bias, LeakyReLU, a residual add or the self-calibration gate's product; eval-mode
  BatchNorm is one multiply-add.
- Host memory: freed blocks stay with the process and the big buffers use huge pages
  (:mod:`jdnet_plugin.utils.host_memory`); page faults had cost a fifth of the forward.
- The dense chain writes each unit's output into one preallocated buffer and the fusion GEMMs read a
  prefix of it, instead of concatenating all earlier features at every unit; consecutive fusions share
  one pass over the prefix (a wider GEMM) and add the few features made since.
- The scale-aggregation fusion applies each 1x1 block at the resolution of its scale (nearest
  upsampling commutes with a 1x1 convolution) and gathers the partial sums up the pyramid.
- On CPU the native kernels (:mod:`.native`, compiled on first use) run what oneDNN cannot fuse: the
  whole SAN bottleneck (BatchNorms, projections, attention, output convolution, residual) in one pass
  that also applies the previous dense fusion's bias and LeakyReLU as it reads its input; and the 1x1
  convolutions that end the scale aggregation and the self-calibrated bottleneck with their adds and
  activations (the latter written straight into the dense buffer). Without them, the same in PyTorch;
  the attention then runs on bands of rows whose ``k*k``-neighbour tensors stay in cache, reading the
  neighbours through strided views (no unfold copies).

Weights are read from the modules at every call (nothing is cached), so this path can never be stale.
It is used by :meth:`JDNet.forward` when gradients are off; autograd, tracing and export take the
module path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils.host_memory import empty_huge
from . import native
from .attention import _check_size

__all__ = ["fast_rain_layer", "sam_attention_banded"]

_SLOPE = 0.2
# Pixels per band of the attention: its (C, k*k, band) temporaries must stay in cache.
BAND_PIXELS = 2048
# Output columns of one dense-fusion GEMM: narrower GEMMs (32 columns) run at half the rate here.
FUSION_COLUMNS = 128


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """A channels_last ``(B, C, H, W)`` tensor as its ``(B, H, W, C)`` storage (a view)."""
    return x.permute(0, 2, 3, 1)


_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) \
    if torch.backends.mkldnn.is_available() else None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0, stride: int = 1,
            *, lrelu: bool = False, add: torch.Tensor | None = None, mul: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(x)``, then ``+ add`` or ``* mul``, then LeakyReLU if asked. On CPU in fp32 one oneDNN call
    with the extra operations fused (one pass over the output instead of two or three); elsewhere the
    same in steps."""
    other = add if add is not None else mul
    if (_POINTWISE is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not (lrelu and other is not None) and not _autocast_on("cpu")):
        geometry = ([padding] * 2, [stride] * 2, [1, 1], 1)
        if other is None:
            return _POINTWISE(x, weight, bias, *geometry, "leaky_relu" if lrelu else "none",
                              [_SLOPE] if lrelu else [], "")
        return _POINTWISE.binary(x, other, weight, bias, *geometry, "add" if add is not None else "mul",
                                 None, None, [], None)
    y = F.conv2d(x, weight, bias, stride, padding)
    if add is not None:
        y = y.add_(add)
    if mul is not None:
        y = y.mul_(mul)
    return F.leaky_relu_(y, _SLOPE) if lrelu else y


def _conv(conv: torch.nn.Conv2d, x: torch.Tensor, **post) -> torch.Tensor:
    """A square, zero-padded, ungrouped ``nn.Conv2d`` of this model through :func:`_conv2d`."""
    return _conv2d(x, conv.weight, conv.bias, conv.padding[0], conv.stride[0], **post)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 convolution with a 2-D ``(out, in)`` weight (a slice of a wider one); channels_last stays so."""
    return _conv2d(x, weight.reshape(*weight.shape, 1, 1).contiguous(), bias)


def _bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
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


def _bn_lrelu(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``lrelu(bn(x))``; in eval mode as one per-channel multiply-add (the module's kernel is several times
    slower on channels_last)."""
    affine = _bn_affine(bn)
    if affine is None:
        return F.leaky_relu_(bn(x), _SLOPE)
    scale, shift = affine
    view = (-1, 1, 1)
    return F.leaky_relu_(torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view)), _SLOPE)


def sam_attention_banded(x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, pos: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor, kernel_size: int,
                         band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """SAM's attention (relation, folded ``conv_w``, softmax, aggregation) band by band (``band_pixels``
    per band), for where the native bottleneck (:func:`_san_native`) does not run.

    ``x1, x2``: ``(B, r, H, W)`` relation embeddings; ``x3``: ``(B, M, H, W)`` values; ``pos``:
    ``(1, 2, H, W)`` the position map after ``conv_p``; ``weight``: ``(S, r + 2)`` the product of
    ``conv_w``'s two 1x1 convolutions, ``bias``: ``(S,)``. Returns ``(B, M, H, W)``.

    ``bias`` is constant over the window, so the softmax cancels it; it is accepted for the
    signature's sake (the module path adds it).
    """
    pad = _check_size(x1, kernel_size)
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
        F.leaky_relu_(rel, _SLOPE)
        logits = torch.bmm(weight.expand(b, -1, -1), rel.view(b, c, kk * n)).view(b, s, kk, n)
        att = logits.softmax(2).view(b, 1, s, k, k, y1 - y0, w)
        val = vp[:, :, y0:y1 + 2 * pad].unfold(2, k, 1).unfold(3, k, 1).permute(0, 1, 4, 5, 2, 3)
        prod = scratch[b * c * kk * n:b * (c + m) * kk * n].view(b, m // s, s, k, k, y1 - y0, w)
        torch.mul(val.view(b, m // s, s, k, k, y1 - y0, w), att, out=prod)
        torch.sum(prod, (3, 4), out=out[:, :, y0:y1].view(b, m // s, s, y1 - y0, w))
    return out


def _position_conv(conv: torch.nn.Conv2d, h: int, w: int) -> torch.Tensor:
    """``conv(position(h, w))`` for the 1x1 ``conv_p``: its x and y terms are a row and a column, so one
    broadcast sum (the convolution module took milliseconds on this 2-channel map)."""
    wgt = conv.weight.flatten(1)
    lx = torch.linspace(-1.0, 1.0, w, device=wgt.device, dtype=wgt.dtype)
    ly = torch.linspace(-1.0, 1.0, h, device=wgt.device, dtype=wgt.dtype)
    pos = wgt[:, 0, None, None] * lx + wgt[:, 1, None, None] * ly[:, None]
    if conv.bias is not None:
        pos = pos + conv.bias[:, None, None]
    return pos[None]


def _sam_weights(sam, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's ``conv1, conv2, conv3`` stacked (weight ``(2r + M, C)``, bias), ``conv_w``'s two 1x1
    convolutions multiplied ``(S, r + 2)``, and the position map after ``conv_p`` ``(1, 2, H, W)``."""
    _, c1, c2 = sam.conv_w
    w123 = torch.cat([sam.conv1.weight, sam.conv2.weight, sam.conv3.weight]).flatten(1)
    b123 = torch.cat([sam.conv1.bias, sam.conv2.bias, sam.conv3.bias])
    return w123, b123, c2.weight.flatten(1) @ c1.weight.flatten(1), _position_conv(sam.conv_p, h, w)


def _san_native(san, x: torch.Tensor, in_bias: torch.Tensor | None) -> torch.Tensor | None:
    """The whole bottleneck as one native call (see ``native/san.c``), or None where it does not apply."""
    bn1, bn2 = _bn_affine(san.bn1), _bn_affine(san.bn2)
    if (bn1 is None or bn2 is None or x.device.type != "cpu" or x.dtype != torch.float32 or _autocast_on("cpu")
            or not native.available()):
        return None
    w123, b123, wt, pos = _sam_weights(san.sam, *x.shape[-2:])
    out = torch.empty_like(x, memory_format=torch.channels_last)
    done = native.san_bottleneck(_nhwc(x), in_bias, bn1, (w123.contiguous(), b123), pos.contiguous(),
                                 wt.contiguous(), bn2, (san.conv.weight.flatten(1), san.conv.bias),
                                 san.sam.kernel_size, _SLOPE, _nhwc(out))
    return out if done else None


def _san(san, x: torch.Tensor, band_pixels: int, in_bias: torch.Tensor | None = None) -> torch.Tensor:
    """:class:`SANBottleneck` of ``x``, or of ``lrelu(x + in_bias)`` where ``in_bias`` is given."""
    _check_size(x, san.sam.kernel_size)
    out = _san_native(san, x, in_bias)
    if out is not None:
        return out
    if in_bias is not None:
        x = _activate(x, in_bias)
    sam = san.sam
    o = _bn_lrelu(san.bn1, x)
    b, c, h, w = o.shape
    r, m = sam.conv1.out_channels, sam.conv3.out_channels
    w123, b123, wt, pos = _sam_weights(sam, h, w)
    # NCHW planes for the attention: (2r + M, C) @ (C, HW) per image.
    y = torch.bmm(w123.to(o.dtype).expand(b, -1, -1), _nhwc(o).reshape(b, h * w, c).transpose(1, 2))
    y = y.add_(b123[:, None]).view(b, -1, h, w)
    att = sam_attention_banded(y[:, :r], y[:, r:2 * r], y[:, 2 * r:], pos, wt, sam.conv_w[2].bias, sam.kernel_size,
                               band_pixels)
    att = _bn_lrelu(san.bn2, att)
    # conv (M -> C) + x, channels_last: x += (HW, M) @ (M, C) per image, in place (x is not needed
    # after this).
    x = x.contiguous(memory_format=torch.channels_last)
    out = _nhwc(x).view(b, h * w, c)
    out.baddbmm_(att.to(out.dtype).reshape(b, m, h * w).transpose(1, 2),
                 san.conv.weight.flatten(1).t().to(out.dtype).expand(b, -1, -1))
    out.add_(san.conv.bias)
    return x


def _nearest_index(n_in: int, n_out: int, device) -> torch.Tensor:
    """The source rows ``F.interpolate(mode="nearest")`` reads, computed by that same function."""
    src = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in, 1)
    return F.interpolate(src, size=(n_out, 1)).view(n_out).long()


def _compose(outer: torch.Tensor, inner: torch.Tensor, n_mid: int) -> torch.Tensor | None:
    """``g`` with ``g[outer] == inner`` (so that reading through ``outer`` then ``g`` equals reading
    through ``inner``), or None where no such map exists."""
    g = torch.zeros(n_mid, dtype=torch.long, device=outer.device)
    g[outer] = inner
    return g if torch.equal(g[outer], inner) else None


def _gather_hw(x: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """``x[:, :, iy][:, :, :, ix]`` of a channels_last tensor, channels_last."""
    return _nhwc(x).index_select(1, iy).index_select(2, ix).permute(0, 3, 1, 2)


def _add_gathered(x: torch.Tensor, src: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor,
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
        torch.add(_nhwc(x).view(b, sh, fy, sw, fx, c), _nhwc(src)[:, :, None, :, None, :],
                  out=_nhwc(out).view(b, sh, fy, sw, fx, c))
        return out
    return torch.add(x, _gather_hw(src, iy, ix), out=out)


def _residual_block(block, t: torch.Tensor) -> torch.Tensor:
    """:class:`ResidualBlock`: ``c = lrelu(conv_s2(t)); c + conv(lrelu(conv(c)))``."""
    c = _conv(block.convert[0], t, lrelu=True)
    return _conv(block.res[2], _conv(block.res[0], c, lrelu=True), add=c)


def _scale_fusion(unit, x: torch.Tensor) -> torch.Tensor:
    """``lrelu(conv11(cat(x, up(t_1), ..., up(t_S)))) + x``, each 1x1 block at its own resolution."""
    conv = unit.conv11[0]
    c = x.shape[1]
    h, w = x.shape[-2:]
    wgt = conv.weight.flatten(1)
    t, partial = x, []
    for s, block in enumerate(unit.res_list, 1):
        t = _residual_block(block, t)
        partial.append(_conv1x1(t, wgt[:, s * c:(s + 1) * c]))
    # Sum the partial products coarse to fine where nearest indices compose exactly; what is left are
    # sums to add at full resolution, each read through its (rows, columns) indices.
    pending = []
    if partial:
        idx = [(_nearest_index(z.shape[2], h, x.device), _nearest_index(z.shape[3], w, x.device))
               for z in partial]
        acc, (ay, ax) = partial[-1], idx[-1]
        for z, (iy, ix) in zip(reversed(partial[:-1]), reversed(idx[:-1])):
            gy, gx = _compose(iy, ay, z.shape[2]), _compose(ix, ax, z.shape[3])
            if gy is None or gx is None:
                pending.append((acc, ay, ax))
                acc = z
            else:
                acc = _add_gathered(z, acc, gy, gx, out=z)
            ay, ax = iy, ix
        pending.append((acc, ay, ax))
    x = x.contiguous(memory_format=torch.channels_last)
    if len(pending) <= 1:
        out = torch.empty_like(x, memory_format=torch.channels_last)
        pre = (_nhwc(pending[0][0]), *pending[0][1:]) if pending else None
        if native.pointwise(native.Pointwise([_nhwc(x)], wgt[:, :c], conv.bias, _nhwc(out), pre=pre, lrelu=_SLOPE,
                                             post=_nhwc(x))):
            return out
    fused = _conv1x1(x, wgt[:, :c], conv.bias)
    for src, iy, ix in pending:
        _add_gathered(fused, src, iy, ix, out=fused)
    return F.leaky_relu_(fused, _SLOPE).add_(x)


def _scconv(sc, y: torch.Tensor) -> torch.Tensor:
    """:class:`SCConv`: ``lrelu(k4(k3(y) * sigmoid(y + up(k2(y)))))``."""
    small = _conv(sc.k2[1], sc.k2[0](y))
    h, w = y.shape[-2:]
    gate = _add_gathered(y, small, _nearest_index(small.shape[2], h, y.device),
                         _nearest_index(small.shape[3], w, y.device)).sigmoid_()
    return _conv(sc.k4[0], _conv(sc.k3[0], y, mul=gate), lrelu=True)


def _self_calibrated(scn, x: torch.Tensor, out: torch.Tensor) -> None:
    """The self-calibrated bottleneck, written into ``out`` ``(B*H*W, C)``."""
    a = _conv(scn.k1[0], _conv(scn.conv1_a, x, lrelu=True), lrelu=True)
    b = _scconv(scn.scconv, _conv(scn.conv1_b, x, lrelu=True))
    h, w = x.shape[-2:]
    target = out.view(x.shape[0], h, w, -1)
    identity = (torch.arange(h, device=x.device), torch.arange(w, device=x.device))
    if native.pointwise(native.Pointwise([_nhwc(a), _nhwc(b)], scn.conv3.weight.flatten(1), scn.conv3.bias, target,
                                         pre=(_nhwc(x), *identity), lrelu=_SLOPE, stream=True)):
        return
    y = _conv(scn.conv3, torch.cat([a, b], 1), add=x)
    torch.ops.aten.leaky_relu.out(_nhwc(y).reshape(out.shape), _SLOPE, out=out)


def _unit(unit, x: torch.Tensor, in_bias: torch.Tensor | None, band_pixels: int, out: torch.Tensor) -> None:
    """One joint unit of ``x``, or of ``lrelu(x + in_bias)`` where ``in_bias`` is given; its output is
    written into ``out`` ``(B*H*W, C)``."""
    if hasattr(unit, "san"):
        x = _san(unit.san, x, band_pixels, in_bias)
    elif in_bias is not None:
        x = _activate(x, in_bias)
    fused = _scale_fusion(unit, x)
    if hasattr(unit, "scn"):
        _self_calibrated(unit.scn, fused, out)
    else:
        out.copy_(_nhwc(fused).reshape(out.shape))


def _activate(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``lrelu(x + bias)`` of a ``(B, C, H, W)`` view of a channels-last matrix's columns, channels_last."""
    y = torch.add(x, bias.view(-1, 1, 1), out=torch.empty_like(x, memory_format=torch.channels_last))
    return F.leaky_relu_(y, _SLOPE)


def _fusion_block(channels: int, units: int) -> int:
    """Units whose dense fusions share one pass over the feature prefix: enough for a GEMM about
    ``FUSION_COLUMNS`` wide, with the partial sums at most a quarter of the dense buffer."""
    return max(1, min(FUSION_COLUMNS // channels, (units + 1) // 4))


def fast_rain_layer(model, x: torch.Tensor, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """``model.rain_layer(x)`` of a :class:`JDNet` without autograd; see the module docstring.

    ``band_pixels``: pixels per band of the attention (small on CPU for the cache, large on a GPU)."""
    feat = model.enterBlock(x.contiguous(memory_format=torch.channels_last))
    chain = model.derain_net
    b, c, h, w = feat.shape
    n = len(chain.units)
    buf = empty_huge(b, h, w, (n + 1) * c, dtype=feat.dtype, device=feat.device)
    if feat.dtype != torch.float32 and feat.device.type == "cpu":
        # The fusion GEMMs read column prefixes of this buffer. torch 2.14's bf16 CPU GEMM (AVX-512 / AMX)
        # reads on past a prefix whose width is no multiple of 32 and multiplies that by zero padding: a
        # NaN left there by the allocator made the whole output NaN. Columns not yet written hold zeros.
        buf[..., c:].zero_()
    flat = buf.view(-1, (n + 1) * c)
    buf[..., :c] = _nhwc(feat)
    out, out_bias = feat, None  # the next unit's input is lrelu(out + out_bias) where out_bias is set
    block = _fusion_block(c, n)
    partial_buf = empty_huge(flat.shape[0], block * c, dtype=flat.dtype, device=flat.device)
    weights = [fuse[0].weight.flatten(1).to(flat.dtype) for fuse in chain.conv1x1]
    for i, (unit, fuse) in enumerate(zip(chain.units, chain.conv1x1)):
        _unit(unit, out, out_bias, band_pixels, flat[:, (i + 1) * c:(i + 2) * c])
        if i % block == 0:
            # Fusion i reads features 0..i+1; so do fusions i+1.. of this block, which add the features
            # made after it. One GEMM over the prefix, 4x wider, instead of one per unit.
            first, known = i, (i + 2) * c
            ws = torch.cat([wt[:, :known] for wt in weights[i:i + block]])
            partial = torch.mm(flat[:, :known], ws.t(), out=partial_buf[:, :ws.shape[0]])
        y = partial[:, (i - first) * c:(i - first + 1) * c]
        if (i + 2) * c > known:
            y.addmm_(flat[:, known:(i + 2) * c], weights[i][:, known:].t())
        # The fusion's bias and LeakyReLU: left to the next unit, which applies them as it reads y (a
        # column block of the scratch products, read before the next GEMM overwrites them).
        out = y.view(b, h, w, c).permute(0, 3, 1, 2)
        out_bias = fuse[0].bias if fuse[0].bias is not None else torch.zeros(c, dtype=y.dtype, device=y.device)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = out if out_bias is None else _activate(out, out_bias)
    return model.exitBlock(out).contiguous(memory_format=fmt)
