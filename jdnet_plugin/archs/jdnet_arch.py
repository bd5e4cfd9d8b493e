"""JDNet (Wang, Wu, Su, Chen; ACM MM 2020) in pure PyTorch.

Module and parameter names follow the authors' code, so their state_dicts load unchanged
(see ``docs`` of the project: the authors' checkpoint layout). The network predicts the rain
layer ``R`` and returns ``input - R``, unclamped.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import aggregation, aggregation_unfold, position, subtraction, subtraction2
from .fast_forward import BAND_PIXELS, fast_rain_layer

__all__ = ["JDNetConfig", "JDNet", "SAM", "SANBottleneck", "ResidualBlock", "SCConv",
           "SelfCalibratedBottleneck", "JointUnit", "DenseChain"]

_SLOPE = 0.2


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(_SLOPE, inplace=False)


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
        self.conv1 = nn.Conv2d(in_planes, rel_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, rel_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, mid_planes, 1)
        self.conv_w = nn.Sequential(
            _lrelu(),
            nn.Conv2d(rel_planes + 2, rel_planes, 1, bias=False),
            nn.Conv2d(rel_planes, weight_channels, 1),
        )
        self.conv_p = nn.Conv2d(2, 2, 1)

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
        # conv_w is LeakyReLU then two 1x1 convs with nothing between them: fold the convs into one
        # (S, r + 2) matrix, and compute the batch-independent position part once.
        act, c1, c2 = self.conv_w
        a = c2.weight.flatten(1) @ c1.weight.flatten(1)
        rel = F.leaky_relu(subtraction2(x1, x2, k), act.negative_slope)
        pos = F.leaky_relu(subtraction(p, k), act.negative_slope)
        logits = (torch.einsum("sc,bckn->bskn", a[:, :r], rel)
                  + torch.einsum("sc,bckn->bskn", a[:, r:], pos)
                  + c2.bias.view(1, -1, 1, 1))
        return logits.softmax(dim=-2)

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
        self.conv = nn.Conv2d(mid_planes, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.leaky_relu(self.bn1(x), _SLOPE)
        o = F.leaky_relu(self.bn2(self.sam(o)), _SLOPE)
        return self.conv(o) + x


class ResidualBlock(nn.Module):
    """Stride-2 residual block of scale aggregation: ``c = lrelu(conv_s2(t)); c + res(c)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convert = nn.Sequential(_conv(channels, channels, 3, stride=2), _lrelu())
        self.res = nn.Sequential(_conv(channels, channels, 3), _lrelu(), _conv(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convert(x)
        return c + self.res(c)


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


class SelfCalibratedBottleneck(nn.Module):
    """Two half-width branches (plain 3x3, self-calibrated), fused by 1x1, plus the input."""

    def __init__(self, channels: int, pooling_r: int = 4) -> None:
        super().__init__()
        half = channels // 2
        self.conv1_a = nn.Conv2d(channels, half, 1)
        self.k1 = nn.Sequential(_conv(half, half, 3), _lrelu())
        self.conv1_b = nn.Conv2d(channels, half, 1)
        self.scconv = SCConv(half, pooling_r)
        self.conv3 = nn.Conv2d(2 * half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.k1(F.leaky_relu(self.conv1_a(x), _SLOPE))
        b = self.scconv(F.leaky_relu(self.conv1_b(x), _SLOPE))
        return F.leaky_relu(self.conv3(torch.cat([a, b], 1)) + x, _SLOPE)


class JointUnit(nn.Module):
    """One JDNet unit (the authors' ``Scale_attention``): self-attention, scale aggregation,
    self-calibration. Either of the first and last can be switched off (the authors' ablations)."""

    def __init__(self, cfg: JDNetConfig) -> None:
        super().__init__()
        c = cfg.channels
        if cfg.self_attention:
            self.san = SANBottleneck(c, cfg.rel_planes, cfg.mid_planes, cfg.weight_channels, cfg.kernel_size)
        self.res_list = nn.ModuleList(ResidualBlock(c) for _ in range(cfg.scales))
        self.conv11 = nn.Sequential(nn.Conv2d((cfg.scales + 1) * c, c, 1), _lrelu())
        if cfg.self_calibration:
            self.scn = SelfCalibratedBottleneck(c, cfg.sc_pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "san"):
            x = self.san(x)
        feats, t = [x], x
        for block in self.res_list:
            t = block(t)
            feats.append(F.interpolate(t, x.shape[-2:]))
        fused = self.conv11(torch.cat(feats, 1)) + x
        return self.scn(fused) if hasattr(self, "scn") else fused


class DenseChain(nn.Module):
    """Dense chain of joint units: after unit ``i``, ``out = lrelu(conv1x1_i(cat(x0, u0..ui)))``."""

    def __init__(self, cfg: JDNetConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.units = nn.ModuleList(JointUnit(cfg) for _ in range(cfg.units))
        self.conv1x1 = nn.ModuleList(
            nn.Sequential(nn.Conv2d((i + 2) * c, c, 1), _lrelu()) for i in range(cfg.units)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, out = [x], x
        for unit, fuse in zip(self.units, self.conv1x1):
            feats.append(unit(out))
            out = fuse(torch.cat(feats, 1))
        return out


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

        ``"fast"``: without gradients, :func:`~jdnet_plugin.archs.fast_forward.fast_rain_layer`;
        with gradients, the modules with folded attention weights and shift-and-accumulate
        aggregation. ``"reference"``: the modules with every attention tensor unfolded.
        """
        if impl not in ("fast", "reference"):
            raise ValueError(f"attention impl must be 'fast' or 'reference', got {impl!r}")
        self.impl = impl
        for m in self.modules():
            if isinstance(m, SAM):
                m.impl = impl
        return self

    def optimize_for_inference(self, dtype: torch.dtype | None = None, channels_last: bool | None = None) -> "JDNet":
        """Eval mode and the fast path; later calls of the model run under autocast to ``dtype``
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

    def _fast_path(self) -> bool:
        return (self.impl == "fast" and not torch.is_grad_enabled() and not torch.jit.is_scripting()
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling())

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
        if self._fast_path():
            # CPU: bands that fit the cache; GPU: few, large bands (launch overhead), bounded memory.
            band = BAND_PIXELS if x.device.type == "cpu" else 1 << 18
            return fast_rain_layer(self, x, band_pixels=band)
        return self.exitBlock(self.derain_net(self.enterBlock(x)))

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
