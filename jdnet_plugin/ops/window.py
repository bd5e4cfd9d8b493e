"""Pairwise self-attention operations of SAN (Zhao, Jia, Koltun, CVPR 2020) over ``k x k`` windows, as JDNet
uses them.

The authors ran these as hand-written CUDA kernels. Here each one is a PyTorch function (differentiable, any
device and dtype) and an ``nn.Module``. Neighbours outside the image are
read by reflection (index -1 reads index 1), so H and W must be at least ``kernel_size // 2 + 1``.

Shapes follow SAN: a relation tensor is ``(B, C, K, H*W)`` with ``K = kernel_size**2`` and the
offsets ordered row-major, as ``F.unfold`` orders them.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import native

__all__ = [
    "window_padding",
    "position",
    "unfold_reflect",
    "subtraction",
    "subtraction2",
    "aggregation",
    "aggregation_unfold",
    "shift_aggregate",
    "shift_aggregate_backward",
    "window_softmax",
    "window_softmax_backward",
    "attention_softmax",
    "exporting",
    "Subtraction",
    "Subtraction2",
    "Aggregation",
]


def window_padding(x: torch.Tensor, kernel_size: int) -> int:
    """The reflection padding of a ``kernel_size`` window over ``x`` (its last two dims); a clear error if the
    kernel is even or the image too small."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    pad = kernel_size // 2
    h, w = x.shape[-2:]
    if min(h, w) <= pad:
        raise ValueError(
            f"image of size {h}x{w} is too small for a {kernel_size}x{kernel_size} attention window "
            f"with reflection: both sides must be at least {pad + 1}"
        )
    return pad


def exporting() -> bool:
    """Whether a tracer or exporter that knows no ``jdnet::`` operators records this call."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def position(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """The 2-channel coordinate map ``(1, 2, H, W)``: x then y, each ``linspace(-1, 1)``."""
    loc_w = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype).expand(height, width)
    loc_h = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)[:, None].expand(height, width)
    return torch.stack([loc_w, loc_h])[None]


def unfold_reflect(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """All ``K`` reflected neighbours of every pixel: ``(B, C, H, W) -> (B, C, K, H*W)``."""
    pad = window_padding(x, kernel_size)
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.unfold(xp, kernel_size).view(b, c, kernel_size * kernel_size, h * w)


def subtraction(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centre minus neighbour: ``out[b, c, q, p] = x[b, c, p] - x[b, c, p + q]``."""
    return subtraction2(x, x, kernel_size)


def subtraction2(x1: torch.Tensor, x2: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centre of ``x1`` minus neighbour of ``x2``: ``out[b, c, q, p] = x1[b, c, p] - x2[b, c, p + q]``."""
    if x1.shape != x2.shape:
        raise ValueError(f"subtraction2 needs equal shapes, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    b, c, h, w = x1.shape
    return x1.reshape(b, c, 1, h * w) - unfold_reflect(x2, kernel_size)


@torch.library.custom_op("jdnet::shift_aggregate", mutates_args=())
def shift_aggregate(xp: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``out = sum_q xp[window q] * weight[q]`` over a padded input, the core of :func:`aggregation`.

    ``xp``: ``(B, G, S, H + 2p, W + 2p)``; ``weight``: ``(B, 1, S, K, H, W)``; returns ``(B, G, S, H, W)``.
    A ``torch.library`` operator with a fake implementation and a backward (``jdnet::shift_aggregate_backward``,
    itself not differentiable: no second derivatives), so ``torch.compile`` and ``torch.export`` see one
    operation. On CPU in float32 the native kernels (:mod:`.native`) compute both; elsewhere PyTorch, one offset
    at a time.
    """
    out = native.shift_aggregate(xp, weight, kernel_size)
    return out if out is not None else _shift_aggregate_torch(xp, weight, kernel_size)


def _shift_aggregate_torch(xp: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:func:`shift_aggregate` in plain tensor operations, one offset at a time (what the TorchScript tracer and
    the ONNX exporter record: they know no jdnet:: operators)."""
    h, w = weight.shape[-2:]
    out = xp[..., :h, :w] * weight[:, :, :, 0]
    for q in range(1, kernel_size * kernel_size):
        i, j = divmod(q, kernel_size)
        out.addcmul_(xp[..., i : i + h, j : j + w], weight[:, :, :, q])
    return out


@shift_aggregate.register_fake
def _shift_aggregate_fake(xp: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    return xp.new_empty(xp.shape[:3] + weight.shape[-2:], dtype=torch.result_type(xp, weight))


@torch.library.custom_op("jdnet::shift_aggregate_backward", mutates_args=())
def shift_aggregate_backward(xp: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                             kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of :func:`shift_aggregate` with respect to ``xp`` and ``weight``."""
    grads = native.shift_aggregate_backward(xp, weight, grad_out, kernel_size)
    if grads is not None:
        return grads
    # Autograd through the forward's k*k slices would allocate a zero-filled copy of ``xp`` per slice; this
    # accumulates into one gradient buffer instead.
    h, w = weight.shape[-2:]
    grad_xp, grad_w = torch.zeros_like(xp), torch.empty_like(weight)
    for q in range(kernel_size * kernel_size):
        i, j = divmod(q, kernel_size)
        window = (..., slice(i, i + h), slice(j, j + w))
        grad_xp[window].addcmul_(grad_out, weight[:, :, :, q])
        grad_w[:, 0, :, q] = (grad_out * xp[window]).sum(1)
    return grad_xp, grad_w


@shift_aggregate_backward.register_fake
def _shift_aggregate_backward_fake(xp: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                                   kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(xp), torch.empty_like(weight)


def _shift_aggregate_setup(ctx, inputs, output) -> None:
    xp, weight, kernel_size = inputs
    ctx.save_for_backward(xp, weight)
    ctx.kernel_size = kernel_size


def _shift_aggregate_grad(ctx, grad_out: torch.Tensor):
    xp, weight = ctx.saved_tensors
    return *shift_aggregate_backward(xp, weight, grad_out, ctx.kernel_size), None


shift_aggregate.register_autograd(_shift_aggregate_grad, setup_context=_shift_aggregate_setup)


@torch.library.custom_op("jdnet::window_softmax", mutates_args=())
def window_softmax(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, pos: torch.Tensor, kernel_size: int,
                   slope: float) -> torch.Tensor:
    """SAM's attention weights: the softmax over each window of
    ``pos[s, q, p] + sum_c a[s, c] * lrelu(x1[b, c, p] - x2p[b, c, p + q])``.

    ``x1``: ``(B, R, H, W)``; ``x2p``: ``(B, R, H + k - 1, W + k - 1)`` (padded); ``a``: ``(S, R)``; ``pos``:
    ``(S, K, H, W)`` the position's part of the logits; returns ``(B, S, K, H, W)``. A ``torch.library`` operator
    with a fake implementation and a backward (``jdnet::window_softmax_backward``, not differentiable): on CPU in
    float32 the native kernels compute both without the ``(B, R, K, H*W)`` relation tensor (where they run on all
    of PyTorch's threads or PyTorch has one, as for :func:`shift_aggregate`); elsewhere PyTorch.
    """
    if len({x1.dtype, x2p.dtype, a.dtype, pos.dtype}) > 1:
        raise ValueError(f"window_softmax: x1, x2p, a and pos must have one dtype, got {x1.dtype}, {x2p.dtype}, "
                         f"{a.dtype} and {pos.dtype} (attention_softmax promotes them)")
    out = native.window_softmax(x1, x2p, a, pos, kernel_size, slope)
    if out is not None:
        return out
    with torch.autocast(x1.device.type, enabled=False):  # in the inputs' dtype, as the native kernel computes
        return _window_softmax_torch(x1, x2p, a, pos, kernel_size, slope)


def _window_softmax_torch(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, pos: torch.Tensor, kernel_size: int,
                          slope: float) -> torch.Tensor:
    """:func:`window_softmax` in tensor operations (what tracers and exporters record)."""
    b, _, h, w = x1.shape
    rel = F.leaky_relu(_difference(x1, x2p, kernel_size), slope)
    logits = torch.einsum("sc,bckn->bskn", a, rel)
    return (logits.view(b, a.shape[0], kernel_size * kernel_size, h, w) + pos).softmax(dim=2)


def _difference(x1: torch.Tensor, x2p: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``x1[p] - x2p[p + q]``, ``(B, R, K, H*W)``: the relation before its LeakyReLU."""
    b, r, h, w = x1.shape
    return x1.reshape(b, r, 1, h * w) - F.unfold(x2p, kernel_size).view(b, r, kernel_size * kernel_size, h * w)


@window_softmax.register_fake
def _window_softmax_fake(x1, x2p, a, pos, kernel_size, slope):
    return x1.new_empty(x1.shape[0], *pos.shape)


@torch.library.custom_op("jdnet::window_softmax_backward", mutates_args=())
def window_softmax_backward(x1: torch.Tensor, x2p: torch.Tensor, a: torch.Tensor, weight: torch.Tensor,
                            grad: torch.Tensor, kernel_size: int,
                            slope: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`window_softmax`, whose output was ``weight``, with respect to ``x1``, ``x2p``,
    ``a`` and ``pos``."""
    grads = native.window_softmax_backward(x1, x2p, a, weight, grad, kernel_size, slope)
    if grads is not None:
        return grads
    b, r, h, w = x1.shape
    grad_logits = weight * (grad - (weight * grad).sum(2, keepdim=True))
    gl = grad_logits.view(b, a.shape[0], kernel_size * kernel_size, h * w)
    d = _difference(x1, x2p, kernel_size)
    rel = F.leaky_relu(d, slope)
    grad_d = torch.einsum("sc,bskn->bckn", a, gl) * torch.where(d > 0, 1.0, slope).to(d.dtype)
    grad_x2p = -F.fold(grad_d.reshape(b, -1, h * w), x2p.shape[-2:], kernel_size)
    return grad_d.sum(2).view_as(x1), grad_x2p, torch.einsum("bskn,bckn->sc", gl, rel), grad_logits.sum(0)


@window_softmax_backward.register_fake
def _window_softmax_backward_fake(x1, x2p, a, weight, grad, kernel_size, slope):
    return torch.empty_like(x1), torch.empty_like(x2p), torch.empty_like(a), weight.new_empty(weight.shape[1:])


def _window_softmax_setup(ctx, inputs, output) -> None:
    x1, x2p, a, _, kernel_size, slope = inputs
    ctx.save_for_backward(x1, x2p, a, output)
    ctx.kernel_size, ctx.slope = kernel_size, slope


def _window_softmax_grad(ctx, grad: torch.Tensor):
    x1, x2p, a, weight = ctx.saved_tensors
    return *window_softmax_backward(x1, x2p, a, weight, grad, ctx.kernel_size, ctx.slope), None, None


window_softmax.register_autograd(_window_softmax_grad, setup_context=_window_softmax_setup)


def attention_softmax(x1: torch.Tensor, x2: torch.Tensor, a: torch.Tensor, pos: torch.Tensor, kernel_size: int,
                      slope: float) -> torch.Tensor:
    """:func:`window_softmax` of ``x2`` ``(B, R, H, W)`` read by reflection, as ``(B, S, K, H*W)``: the weights
    :func:`aggregation` takes."""
    pad = window_padding(x2, kernel_size)
    b, _, h, w = x2.shape
    k2 = kernel_size * kernel_size
    # One dtype for all four: under autocast the embeddings come in bf16 and the folded weights in fp32, and the
    # backward (which autocast does not see) would meet both.
    dtype = functools.reduce(torch.promote_types, (x1.dtype, x2.dtype, a.dtype, pos.dtype))
    # The training path's embeddings come channels_last; the operators read NCHW.
    x2p = F.pad(x2.to(dtype).contiguous(), (pad, pad, pad, pad), mode="reflect")
    args = (x1.to(dtype).contiguous(), x2p, a.to(dtype).contiguous(),
            pos.to(dtype).reshape(a.shape[0], k2, h, w).contiguous(), kernel_size, slope)
    weights = _window_softmax_torch(*args) if exporting() else window_softmax(*args)
    return weights.view(b, a.shape[0], k2, h * w)


def aggregation(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Attention-weighted sum over each window, weights shared across channel groups.

    ``out[b, c, p] = sum_q weight[b, c mod S, q, p] * x[b, c, p + q]`` with ``x`` of shape
    ``(B, C, H, W)``, ``weight`` of shape ``(B, S, K, H*W)`` and ``C`` a multiple of ``S``.

    The neighbours are visited one offset at a time (shift and accumulate), so no
    ``(B, C, K, H*W)`` copy of ``x`` is made, forward or backward.
    """
    pad = window_padding(x, kernel_size)
    b, c, h, w = x.shape
    s = weight.shape[1]
    k2 = kernel_size * kernel_size
    if weight.shape != (b, s, k2, h * w) or c % s:
        raise ValueError(
            f"aggregation: weight of shape {tuple(weight.shape)} does not fit input {tuple(x.shape)} "
            f"with kernel_size {kernel_size} (expected (B, S, {k2}, {h * w}) with C divisible by S)"
        )
    # NCHW, whatever the caller's layout.
    xp = F.pad(x.contiguous(), (pad, pad, pad, pad), mode="reflect").view(b, c // s, s, h + 2 * pad, w + 2 * pad)
    weight = weight.reshape(b, 1, s, k2, h, w)
    out = (_shift_aggregate_torch if exporting() else shift_aggregate)(xp, weight, kernel_size)
    return out.reshape(b, c, h, w)


def aggregation_unfold(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:func:`aggregation` computed the straightforward way, on all ``K`` unfolded copies of ``x``
    (the reference the fast path is tested and benchmarked against)."""
    b, c, h, w = x.shape
    s = weight.shape[1]
    xu = unfold_reflect(x, kernel_size).view(b, c // s, s, kernel_size * kernel_size, h * w)
    return (xu * weight.view(b, 1, s, -1, h * w)).sum(3).view(b, c, h, w)


class _WindowOp(nn.Module):
    """An attention operation over ``kernel_size x kernel_size`` windows as a module."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class Subtraction(_WindowOp):
    """Module form of :func:`subtraction`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subtraction(x, self.kernel_size)


class Subtraction2(_WindowOp):
    """Module form of :func:`subtraction2`."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return subtraction2(x1, x2, self.kernel_size)


class Aggregation(_WindowOp):
    """Module form of :func:`aggregation`."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return aggregation(x, weight, self.kernel_size)
