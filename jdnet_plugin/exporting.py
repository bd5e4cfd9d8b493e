"""TorchScript and ONNX export of a JDNet, each verified against the eager model.

Both exporters trace the model; under tracing JDNet takes its module path with plain tensor
operations (no custom autograd Function), which records every size from the input, so the exported
model accepts any batch size and any ``H, W >= model.min_size``. Every export is checked: the saved
file is loaded back and run on random images of ``check_sizes``, and its output must match the
eager model's (``model(x)``, the fast path) within ``atol``, or :class:`ExportError` is raised and
no file is left behind.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .archs import JDNet
from .utils.atomic import atomic_path

__all__ = ["ExportError", "ExportResult", "export_torchscript", "export_onnx", "DEFAULT_CHECK_SIZES"]

DEFAULT_CHECK_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (37, 50))
ONNX_MIN_OPSET = 17


class ExportError(RuntimeError):
    """The export failed, or the exported model does not reproduce the eager model."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # largest |exported - eager| over the check images
    checked_sizes: tuple[tuple[int, int], ...]


def _prepare(model: JDNet) -> JDNet:
    if not isinstance(model, JDNet):
        raise TypeError(f"export needs a JDNet, got {type(model).__name__}")
    m = copy.deepcopy(model).float().cpu().eval().set_attention_impl("fast")
    m.inference_dtype = None
    return m


def _check_inputs(model: JDNet, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i, (h, w) in enumerate(sizes):
        if min(h, w) < model.min_size:
            raise ValueError(f"check size {h}x{w} is below the model's minimum side {model.min_size}")
        inputs.append(torch.rand(1 + i % 2, 3, h, w, generator=g))  # batch 1 and 2: dynamic batch too
    return inputs


def _verify(model: JDNet, run: Callable[[torch.Tensor], torch.Tensor], path: Path, fmt: str,
            sizes: Sequence[tuple[int, int]], atol: float) -> float:
    worst = 0.0
    for x in _check_inputs(model, sizes):
        with torch.inference_mode():
            ref = model(x)
        try:
            out = run(x)
        except Exception as e:  # the runtime's own errors: shape, unsupported operator, ...
            raise ExportError(f"{fmt} model {path} failed on a {tuple(x.shape)} input: {e}") from e
        if out.shape != ref.shape:
            raise ExportError(f"{fmt} model {path} gave shape {tuple(out.shape)} for {tuple(x.shape)}")
        diff = (out - ref).abs().max().item()
        worst = max(worst, diff)
        if not diff <= atol:
            raise ExportError(f"{fmt} model {path} differs from the eager model by {diff:.3g} "
                              f"(> {atol:g}) on a {tuple(x.shape)} input")
    return worst


def export_torchscript(model: JDNet, path: str | os.PathLike, *, example_size: tuple[int, int] = (64, 64),
                       check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
                       atol: float = 1e-4) -> ExportResult:
    """Trace ``model`` (float32, CPU) into a TorchScript file at ``path`` (``torch.jit.load`` it)."""
    m = _prepare(model)
    example = torch.rand(1, 3, *example_size)
    path = Path(path)
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            traced = torch.jit.trace(m, example, check_trace=False)
            traced.save(str(tmp))
            loaded = torch.jit.load(str(tmp))

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return loaded(x)

        diff = _verify(m, run, path, "TorchScript", check_sizes, atol)
    return ExportResult(path, "torchscript", diff, tuple(map(tuple, check_sizes)))


def export_onnx(model: JDNet, path: str | os.PathLike, *, opset: int = ONNX_MIN_OPSET,
                example_size: tuple[int, int] = (64, 64), dynamic: bool = True,
                check_sizes: Sequence[tuple[int, int]] | None = None, atol: float = 1e-4) -> ExportResult:
    """Export ``model`` (float32) to ONNX at ``path``: input ``image`` (B, 3, H, W) in [0, 1], output
    ``derained``; batch, H and W dynamic unless ``dynamic=False``. Checked with onnxruntime."""
    if opset < ONNX_MIN_OPSET:
        raise ValueError(f"ONNX opset must be >= {ONNX_MIN_OPSET}, got {opset}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'jdnet-plugin[export]'") from e
    m = _prepare(model)
    if check_sizes is None:
        check_sizes = DEFAULT_CHECK_SIZES if dynamic else (example_size,)
    example = torch.rand(1, 3, *example_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape checks, the TorchScript exporter's notice
            try:
                torch.onnx.export(m, (example,), str(tmp), opset_version=opset, dynamo=False,
                                  input_names=["image"], output_names=["derained"],
                                  dynamic_axes={"image": axes, "derained": axes} if dynamic else None)
            except Exception as e:
                raise ExportError(f"ONNX export to {path} failed: {e}") from e
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

        diff = _verify(m, run, path, "ONNX", check_sizes, atol)
    return ExportResult(path, "onnx", diff, tuple(map(tuple, check_sizes)))
