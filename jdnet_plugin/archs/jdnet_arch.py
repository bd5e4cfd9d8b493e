"""JDNet (Wang, Wu, Su, Chen; ACM MM 2020) in pure PyTorch.

Module and parameter names follow the authors' code, so their state_dicts load unchanged
(see ``docs`` of the project: the authors' checkpoint layout). The network predicts the rain
layer ``R`` and returns ``input - R``, unclamped.

Each block has two paths to the same function: ``forward`` (differentiable, what training, tracing and export
run) and ``forward_fused`` (inference: channels_last, fused operations of :mod:`jdnet_plugin.ops`, reading its
own submodules' weights at every call, so it can never be stale). :class:`JDNet` takes the fused path in eval
mode (``eval()``, :meth:`JDNet.optimize_for_inference`) where autograd does not record.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import native
from ..ops.fused import (BAND_PIXELS, FUSION_COLUMNS, SLOPE, Conv1x1, add_gathered, bn_affine, compose_nearest,
                         conv1x1, conv_post, dense_1x1, layout_of, lrelu_bias, nearest_composes, nearest_index, nhwc,
                         position_conv, san_bottleneck)
from ..ops.window import (aggregation, aggregation_unfold, attention_softmax, exporting, position, subtraction,
                          subtraction2)
from ..utils.host_memory import empty_huge

__all__ = ["JDNetConfig", "JDNet", "SAM", "SANBottleneck", "ResidualBlock", "SCConv",
           "SelfCalibratedBottleneck", "JointUnit", "DenseChain"]


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(SLOPE, inplace=False)


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


@dataclass
class JDNetConfig:
    """Every architectural parameter of JDNet; the defaults are the paper's setting."""

    channels: int = 32
    units: int = 32
    scales: int = 4
    self_attention: bool = True
    self_calibration: bool = True
    kernel_size: int = 7
    rel_planes: int | None = None  # default channels // 16
    mid_planes: int | None = None  # default channels // 4
    weight_channels: int | None = None  # attention weight maps shared by channel groups; default mid // 8
    sc_pooling: int = 4

    def __post_init__(self) -> None:
        c = self.channels
        if c < 2 or c % 2:
            raise ValueError(f"channels must be even and >= 2, got {c}")
        if self.units < 1 or self.scales < 0:
            raise ValueError(f"units must be >= 1 and scales >= 0, got {self.units} and {self.scales}")
        self.rel_planes = self.rel_planes or max(1, c // 16)
        self.mid_planes = self.mid_planes or max(1, c // 4)
        self.weight_channels = self.weight_channels or max(1, self.mid_planes // 8)
        if self.mid_planes % self.weight_channels:
            raise ValueError(
                f"mid_planes ({self.mid_planes}) must be a multiple of weight_channels ({self.weight_channels})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JDNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown JDNet config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class SAM(nn.Module):
    """Pairwise self-attention: relation of ``conv1(x)`` and ``conv2(x)`` plus position, weights by
    ``conv_w`` and a softmax over the window, aggregation of ``conv3(x)``."""

    def __init__(self, in_planes: int, rel_planes: int, mid_planes: int, weight_channels: int,
                 kernel_size: int = 7) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv1 = Conv1x1(in_planes, rel_planes)
        self.conv2 = Conv1x1(in_planes, rel_planes)
        self.conv3 = Conv1x1(in_planes, mid_planes)
        self.conv_w = nn.Sequential(
            _lrelu(),
            Conv1x1(rel_planes + 2, rel_planes, bias=False),
            Conv1x1(rel_planes, weight_channels),
        )
        self.conv_p = Conv1x1(2, 2)

        # "fast": folded weight convs and shift-and-accumulate aggregation; "reference": the
        # straightforward computation on unfolded k*k copies. Same result, same parameters.
        self.impl = "fast"

    def attention_weights(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights ``(B, S, K, H*W)`` from the two relation embeddings."""
        b, r, h, w = x1.shape
        k = self.kernel_size
        p = self.conv_p(position(h, w, device=x1.device, dtype=x1.dtype))
        if self.impl == "reference":
            rel = torch.cat([subtraction2(x1, x2, k), subtraction(p, k).expand(b, -1, -1, -1)], 1)
            return self.conv_w(rel).softmax(dim=-2)
        # The batch-independent position part once.
        a, bias = self.folded_weights()
        pos = torch.einsum("sc,ckn->skn", a[:, r:], F.leaky_relu(subtraction(p, k), SLOPE)[0]) + bias.view(-1, 1, 1)
        return attention_softmax(x1, x2, a[:, :r], pos, k, SLOPE)

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv_w``, a LeakyReLU then two 1x1 convolutions with nothing between them, as one ``(S, r + 2)``
        matrix and its bias."""
        _, c1, c2 = self.conv_w
        return c2.weight.flatten(1) @ c1.weight.flatten(1), c2.bias

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv1, conv2, conv3`` stacked: weight ``(2r + M, C)`` and bias."""
        convs = (self.conv1, self.conv2, self.conv3)
        return torch.cat([c.weight for c in convs]).flatten(1), torch.cat([c.bias for c in convs])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.attention_weights(self.conv1(x), self.conv2(x))
        aggregate = aggregation_unfold if self.impl == "reference" else aggregation
        return aggregate(self.conv3(x), w, self.kernel_size)


class SANBottleneck(nn.Module):
    """``conv(lrelu(bn2(sam(lrelu(bn1(x)))))) + x``."""

    def __init__(self, channels: int, rel_planes: int, mid_planes: int, weight_channels: int,
                 kernel_size: int = 7) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.sam = SAM(channels, rel_planes, mid_planes, weight_channels, kernel_size)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv = Conv1x1(mid_planes, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.leaky_relu(self.bn1(x), SLOPE)
        o = F.leaky_relu(self.bn2(self.sam(o)), SLOPE)
        return self.conv(o.contiguous(memory_format=layout_of(x))) + x

    def forward_fused(self, x: torch.Tensor, in_bias: torch.Tensor | None = None,
                      band_pixels: int = BAND_PIXELS) -> torch.Tensor:
        """``forward`` of ``x``, or of ``lrelu(x + in_bias)`` where ``in_bias`` is given: in eval mode one
        ``jdnet::san_bottleneck`` (channels_last out), with batch statistics the modules."""
        bn1, bn2 = bn_affine(self.bn1), bn_affine(self.bn2)
        if bn1 is None or bn2 is None:  # batch statistics
            return self(x if in_bias is None else lrelu_bias(x, in_bias))
        sam = self.sam
        att_weight, _ = sam.folded_weights()  # its bias is constant over the window: the softmax cancels it
        return san_bottleneck(x, in_bias, *bn1, *sam.projections(), position_conv(sam.conv_p, *x.shape[-2:]),
                              att_weight, *bn2, self.conv.weight.flatten(1), self.conv.bias, sam.kernel_size,
                              band_pixels)


class ResidualBlock(nn.Module):
    """Stride-2 residual block of scale aggregation: ``c = lrelu(conv_s2(t)); c + res(c)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convert = nn.Sequential(_conv(channels, channels, 3, stride=2), _lrelu())
        self.res = nn.Sequential(_conv(channels, channels, 3), _lrelu(), _conv(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convert(x)
        return c + self.res(c)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``forward``, each convolution one oneDNN call with its LeakyReLU or residual add."""
        c = conv_post(self.convert[0], x, lrelu=True)
        return conv_post(self.res[2], conv_post(self.res[0], c, lrelu=True), add=c)


class SCConv(nn.Module):
    """Self-calibrated convolution: ``lrelu(k4(k3(y) * sigmoid(y + up(k2(y)))))``."""

    def __init__(self, planes: int, pooling_r: int = 4) -> None:
        super().__init__()
        self.k2 = nn.Sequential(nn.AvgPool2d(pooling_r, pooling_r), _conv(planes, planes, 3))
        self.k3 = nn.Sequential(_conv(planes, planes, 3))
        self.k4 = nn.Sequential(_conv(planes, planes, 3), _lrelu())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(y + F.interpolate(self.k2(y), y.shape[-2:]))
        return self.k4(self.k3(y) * gate)

    def forward_fused(self, y: torch.Tensor) -> torch.Tensor:
        """``forward``: the gate's upsampled sum without an interpolated copy, its product fused into ``k3``."""
        small = conv_post(self.k2[1], self.k2[0](y))
        h, w = y.shape[-2:]
        gate = add_gathered(y, small, nearest_index(small.shape[2], h, y.device),
                            nearest_index(small.shape[3], w, y.device)).sigmoid_()
        return conv_post(self.k4[0], conv_post(self.k3[0], y, mul=gate), lrelu=True)


class SelfCalibratedBottleneck(nn.Module):
    """Two half-width branches (plain 3x3, self-calibrated), fused by 1x1, plus the input."""

    def __init__(self, channels: int, pooling_r: int = 4) -> None:
        super().__init__()
        half = channels // 2
        self.conv1_a = Conv1x1(channels, half)
        self.k1 = nn.Sequential(_conv(half, half, 3), _lrelu())
        self.conv1_b = Conv1x1(channels, half)
        self.scconv = SCConv(half, pooling_r)
        self.conv3 = Conv1x1(2 * half, channels)
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # "fast": the half-width 3x3 convolutions channels_last (oneDNN's backward of so few channels took twice as
        # long in NCHW).
        layout = torch.channels_last if self.impl == "fast" else torch.contiguous_format
        a = self.k1(F.leaky_relu(self.conv1_a(x), SLOPE).contiguous(memory_format=layout))
        b = self.scconv(F.leaky_relu(self.conv1_b(x), SLOPE).contiguous(memory_format=layout))
        return F.leaky_relu(self.conv3(torch.cat([a, b], 1).contiguous(memory_format=layout_of(x))) + x, SLOPE)

    def forward_fused(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``forward(x)`` written into ``out`` ``(B*H*W, C)`` (a column block of the dense buffer)."""
        a = conv_post(self.k1[0], conv_post(self.conv1_a, x, lrelu=True), lrelu=True)
        b = self.scconv.forward_fused(conv_post(self.conv1_b, x, lrelu=True))
        h, w = x.shape[-2:]
        target = out.view(x.shape[0], h, w, -1)
        identity = (torch.arange(h, device=x.device), torch.arange(w, device=x.device))
        if native.pointwise(native.Pointwise([nhwc(a), nhwc(b)], self.conv3.weight.flatten(1), self.conv3.bias,
                                             target, pre=(nhwc(x), *identity), lrelu=SLOPE, stream=True)):
            return
        y = conv_post(self.conv3, torch.cat([a, b], 1), add=x)
        torch.ops.aten.leaky_relu.out(nhwc(y).reshape(out.shape), SLOPE, out=out)


class JointUnit(nn.Module):
    """One JDNet unit (the authors' ``Scale_attention``): self-attention, scale aggregation,
    self-calibration. Either of the first and last can be switched off (the authors' ablations)."""

    def __init__(self, cfg: JDNetConfig) -> None:
        super().__init__()
        c = cfg.channels
        if cfg.self_attention:
            self.san = SANBottleneck(c, cfg.rel_planes, cfg.mid_planes, cfg.weight_channels, cfg.kernel_size)
        self.res_list = nn.ModuleList(ResidualBlock(c) for _ in range(cfg.scales))
        self.conv11 = nn.Sequential(Conv1x1((cfg.scales + 1) * c, c), _lrelu())
        if cfg.self_calibration:
            self.scn = SelfCalibratedBottleneck(c, cfg.sc_pooling)
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "san"):
            x = self.san(x)
        if self.impl == "reference":
            feats, t = [x], x
            for block in self.res_list:
                t = block(t)
                feats.append(F.interpolate(t, x.shape[-2:]))
            fused = self.conv11(torch.cat(feats, 1)) + x
        else:
            fused = self._scale_fusion(x)
        return self.scn(fused) if hasattr(self, "scn") else fused

    def _scale_fusion(self, x: torch.Tensor) -> torch.Tensor:
        """``lrelu(conv11(cat(x, up(t_1), ..., up(t_S)))) + x`` without the concatenation: each scale's block of
        the 1x1 convolution at its own resolution, then upsampled (nearest upsampling commutes with a 1x1
        convolution); the pyramid's convolutions channels_last, as in SelfCalibratedBottleneck. In a jdnet step the
        concatenation and the convolution's backward over it had taken a fifth of the time."""
        conv = self.conv11[0]
        c = x.shape[1]
        wgt = conv.weight.flatten(1)
        fused = conv1x1(x, wgt[:, :c], conv.bias)
        t, partial = x.contiguous(memory_format=torch.channels_last), []
        for s, block in enumerate(self.res_list, 1):
            t = block(t)
            partial.append(conv1x1(t.contiguous(memory_format=layout_of(x)), wgt[:, s * c:(s + 1) * c]))
        # Summed coarse to fine at their own resolutions where nearest upsampling composes exactly (as in the fused
        # path): one full-resolution upsampling and sum instead of one per scale. Not where a tracer or compiler
        # records: what composes depends on the size, and the recorded graph must hold for every size.
        size, pending = x.shape[-2:], []  # sums left to upsample to full resolution
        nest = not (exporting() or torch.compiler.is_compiling())
        for z in reversed(partial):
            if nest and pending and all(nearest_composes(*n) for n in zip(pending[-1].shape[-2:], z.shape[-2:], size)):
                pending[-1] = z + F.interpolate(pending[-1], z.shape[-2:])
            else:
                pending.append(z)
        for z in pending:
            fused = fused + F.interpolate(z, size)
        return F.leaky_relu(fused, SLOPE) + x

    def forward_fused(self, x: torch.Tensor, in_bias: torch.Tensor | None, band_pixels: int,
                      out: torch.Tensor) -> None:
        """``forward`` of ``x``, or of ``lrelu(x + in_bias)`` where ``in_bias`` is given, written into ``out``
        ``(B*H*W, C)``."""
        if hasattr(self, "san"):
            x = self.san.forward_fused(x, in_bias, band_pixels)
        elif in_bias is not None:
            x = lrelu_bias(x, in_bias)
        fused = self._scale_fusion_fused(x)
        if hasattr(self, "scn"):
            self.scn.forward_fused(fused, out)
        else:
            out.copy_(nhwc(fused).reshape(out.shape))

    def _scale_fusion_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``lrelu(conv11(cat(x, up(t_1), ..., up(t_S)))) + x``, each 1x1 block at its own resolution (nearest
        upsampling commutes with a 1x1 convolution), the partial sums gathered up the pyramid."""
        conv = self.conv11[0]
        c = x.shape[1]
        h, w = x.shape[-2:]
        wgt = conv.weight.flatten(1)
        t, partial = x, []
        for s, block in enumerate(self.res_list, 1):
            t = block.forward_fused(t)
            partial.append(conv1x1(t, wgt[:, s * c:(s + 1) * c]))
        # Sum the partial products coarse to fine where nearest indices compose exactly; what is left are
        # sums to add at full resolution, each read through its (rows, columns) indices.
        pending = []
        if partial:
            idx = [(nearest_index(z.shape[2], h, x.device), nearest_index(z.shape[3], w, x.device))
                   for z in partial]
            acc, (ay, ax) = partial[-1], idx[-1]
            for z, (iy, ix) in zip(reversed(partial[:-1]), reversed(idx[:-1])):
                gy, gx = compose_nearest(iy, ay, z.shape[2]), compose_nearest(ix, ax, z.shape[3])
                if gy is None or gx is None:
                    pending.append((acc, ay, ax))
                    acc = z
                else:
                    acc = add_gathered(z, acc, gy, gx, out=z)
                ay, ax = iy, ix
            pending.append((acc, ay, ax))
        x = x.contiguous(memory_format=torch.channels_last)
        if len(pending) <= 1:
            out = torch.empty_like(x, memory_format=torch.channels_last)
            pre = (nhwc(pending[0][0]), *pending[0][1:]) if pending else None
            if native.pointwise(native.Pointwise([nhwc(x)], wgt[:, :c], conv.bias, nhwc(out), pre=pre, lrelu=SLOPE,
                                                 post=nhwc(x))):
                return out
        fused = conv1x1(x, wgt[:, :c], conv.bias)
        for src, iy, ix in pending:
            add_gathered(fused, src, iy, ix, out=fused)
        return F.leaky_relu_(fused, SLOPE).add_(x)


class DenseChain(nn.Module):
    """Dense chain of joint units: after unit ``i``, ``out = lrelu(conv1x1_i(cat(x0, u0..ui)))``."""

    def __init__(self, cfg: JDNetConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.units = nn.ModuleList(JointUnit(cfg) for _ in range(cfg.units))
        self.conv1x1 = nn.ModuleList(
            nn.Sequential(Conv1x1((i + 2) * c, c), _lrelu()) for i in range(cfg.units)
        )
        self.impl = "fast"  # "reference": the authors' concatenation of all earlier features at every unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            feats, out = [x], x
            for unit, fuse in zip(self.units, self.conv1x1):
                feats.append(unit(out))
                out = fuse(torch.cat(feats, 1))
            return out
        # Features are kept as (pixels, channels) matrices, each made once, and each fusion's GEMMs read them
        # where they are: the concatenations and oneDNN's 1x1 convolutions over them took about 1.5-2x as long
        # in a training step of jdnet.
        # The features stay channels_last, so that these matrices are their storage (no copies).
        b, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        feats, out = [nhwc(x).reshape(-1, c)], x
        for unit, fuse in zip(self.units, self.conv1x1):
            feats.append(nhwc(unit(out)).reshape(-1, c))
            y = F.leaky_relu(dense_1x1(feats, fuse[0].weight, fuse[0].bias), SLOPE)
            out = y.view(b, h, w, c).permute(0, 3, 1, 2)
        return out

    @staticmethod
    def fusion_block(channels: int, units: int) -> int:
        """Units whose dense fusions share one pass over the feature prefix in :meth:`forward_fused`: enough
        for a GEMM about ``FUSION_COLUMNS`` wide, with the partial sums at most a quarter of the dense buffer."""
        return max(1, min(FUSION_COLUMNS // channels, (units + 1) // 4))

    def forward_fused(self, x: torch.Tensor, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
        """``forward(x)``, channels_last. Each unit writes its output into one preallocated buffer and the
        fusion GEMMs read a prefix of it (no concatenation of all earlier features at every unit);
        consecutive fusions share one pass over the prefix (a wider GEMM) and add the few features made
        since; each fusion's bias and LeakyReLU are applied by the next unit as it reads its input."""
        b, c, h, w = x.shape
        n = len(self.units)
        buf = empty_huge(b, h, w, (n + 1) * c, dtype=x.dtype, device=x.device)
        if x.dtype != torch.float32 and x.device.type == "cpu":
            # The fusion GEMMs read column prefixes of this buffer. torch 2.14's bf16 CPU GEMM (AVX-512 / AMX)
            # reads on past a prefix whose width is no multiple of 32 and multiplies that by zero padding: a
            # NaN left there by the allocator made the whole output NaN. Columns not yet written hold zeros.
            buf[..., c:].zero_()
        flat = buf.view(-1, (n + 1) * c)
        buf[..., :c] = nhwc(x)
        out, out_bias = x, None  # the next unit's input is lrelu(out + out_bias) where out_bias is set
        block = self.fusion_block(c, n)
        partial_buf = empty_huge(flat.shape[0], block * c, dtype=flat.dtype, device=flat.device)
        weights = [fuse[0].weight.flatten(1).to(flat.dtype) for fuse in self.conv1x1]
        for i, (unit, fuse) in enumerate(zip(self.units, self.conv1x1)):
            unit.forward_fused(out, out_bias, band_pixels, flat[:, (i + 1) * c:(i + 2) * c])
            if i % block == 0:
                # Fusion i reads features 0..i+1; so do fusions i+1.. of this block, which add the features
                # made after it. One GEMM over the prefix, wider, instead of one per unit.
                first, known = i, (i + 2) * c
                ws = torch.cat([wt[:, :known] for wt in weights[i:i + block]])
                partial = torch.mm(flat[:, :known], ws.t(), out=partial_buf[:, :ws.shape[0]])
            y = partial[:, (i - first) * c:(i - first + 1) * c]
            if (i + 2) * c > known:
                y.addmm_(flat[:, known:(i + 2) * c], weights[i][:, known:].t())
            # A column block of the scratch products, read by the next unit before the next GEMM overwrites it.
            out = y.view(b, h, w, c).permute(0, 3, 1, 2)
            out_bias = fuse[0].bias if fuse[0].bias is not None else torch.zeros(c, dtype=y.dtype, device=y.device)
        return out if out_bias is None else lrelu_bias(out, out_bias)


class JDNet(nn.Module):
    """JDNet: RGB ``(B, 3, H, W)`` in [0, 1] -> derained image of the same shape (``input - rain``).

    Any ``H, W >= 4`` with the default 7x7 attention window (``kernel_size // 2 + 1`` in general).
    """

    def __init__(self, config: JDNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a JDNetConfig or keyword parameters, not both")
        self.config = config if config is not None else JDNetConfig(**kwargs)
        c = self.config.channels
        self.enterBlock = nn.Sequential(_conv(3, c, 3), _lrelu())
        self.derain_net = DenseChain(self.config)
        self.exitBlock = nn.Sequential(_conv(c, 3, 3), _lrelu())
        self.impl = "fast"
        self.inference_dtype: torch.dtype | None = None

    def set_attention_impl(self, impl: str) -> "JDNet":
        """Switch between ``"fast"`` (default) and ``"reference"``, the straightforward computation.

        ``"fast"``: in eval mode where autograd does not record, the blocks' ``forward_fused``; otherwise
        the modules with the attention's weights and aggregation as two operators with their own backward
        (``jdnet::window_softmax``, ``jdnet::shift_aggregate``), features channels_last, 1x1 convolutions as GEMMs
        over their storage, the dense chain's fusions as GEMMs over features made once.
        ``"reference"``: the modules as the authors wrote them, every attention tensor unfolded and all earlier
        features concatenated at every unit of the dense chain. Every block with an ``impl`` is switched.
        """
        if impl not in ("fast", "reference"):
            raise ValueError(f"attention impl must be 'fast' or 'reference', got {impl!r}")
        for m in self.modules():
            if hasattr(m, "impl"):
                m.impl = impl
        return self

    def optimize_for_inference(self, dtype: torch.dtype | None = None, channels_last: bool | None = None) -> "JDNet":
        """Eval mode and the fast path (the blocks' fused forwards); later calls of the model run under autocast to ``dtype``
        (``torch.bfloat16`` / ``torch.float16``; None: the parameters' dtype) and return the input's
        dtype. ``channels_last`` stores the convolution weights channels_last (cuDNN prefers it; None:
        only when the parameters are on a GPU). The fast path keeps its features channels_last either
        way. Returns ``self``.
        """
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"inference dtype must be None, float32, bfloat16 or float16, got {dtype}")
        self.eval().set_attention_impl("fast")
        self.inference_dtype = None if dtype == torch.float32 else dtype
        if channels_last is None:
            channels_last = next(self.parameters()).device.type == "cuda"
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def uses_fused_path(self, x: torch.Tensor) -> bool:
        """Whether ``self(x)`` runs the blocks' fused forwards: eval mode and the fast impl, where autograd
        records nothing (they have no backward) and no tracer or compiler is watching (they record the modules)."""
        if self.training or self.impl != "fast":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return not (exporting() or torch.compiler.is_compiling())

    @property
    def min_size(self) -> int:
        """Smallest H and W: the attention window reflects, self-calibration average-pools."""
        cfg = self.config
        return max(cfg.kernel_size // 2 + 1 if cfg.self_attention else 1, cfg.sc_pooling if cfg.self_calibration else 1)

    @property
    def inference_bytes_per_pixel(self) -> int:
        """Peak working memory of the float32 no-grad forward per input pixel, about: the dense chain's
        ``units + 1`` feature maps plus some 12 more at a time (measured peak over the process's baseline:
        jdnet-lite 1.2 KB, jdnet 5.5 KB). :func:`derain_tensor` sizes its tiles with it."""
        cfg = self.config
        return 4 * cfg.channels * (cfg.units + 1 + 12)

    @property
    def tile_align(self) -> int:
        """Tiles start at multiples of this (:func:`derain_tensor`): the stride of the coarsest scale and the
        self-calibration pooling. A crop starting there sees the pyramid's grid of the whole image, so away
        from its borders it computes what the whole image does (up to the position map's scale)."""
        cfg = self.config
        return math.lcm(2 ** cfg.scales, cfg.sc_pooling if cfg.self_calibration else 1)

    def rain_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted rain layer ``R`` (so that the output is ``x - R``)."""
        if not self.uses_fused_path(x):
            return self.exitBlock(self.derain_net(self.enterBlock(x)))
        # CPU: attention bands that fit the cache; GPU: few, large bands (launch overhead), bounded memory.
        band = BAND_PIXELS if x.device.type == "cpu" else 1 << 18
        feat = self.enterBlock(x.contiguous(memory_format=torch.channels_last))
        out = self.exitBlock(self.derain_net.forward_fused(feat, band))
        return out.contiguous(memory_format=layout_of(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"JDNet expects RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"JDNet needs H and W >= {self.min_size} (reflection in the attention window), "
                f"got {tuple(x.shape[-2:])}"
            )
        if self.inference_dtype is None:
            return x - self.rain_layer(x)
        with torch.autocast(x.device.type, dtype=self.inference_dtype):
            rain = self.rain_layer(x)
        return (x - rain.to(x.dtype)).contiguous()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
