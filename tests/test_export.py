"""TorchScript and ONNX export, the API and ``python -m jdnet_plugin.export``."""
import pytest
import torch

from jdnet_plugin.checkpoint import save_checkpoint
from jdnet_plugin.cli.export import main
from jdnet_plugin.exporting import ExportError, export_onnx, export_torchscript
from jdnet_plugin.registry import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("jdnet-lite", units=1, scales=2).eval()


def _eager(model, x):
    with torch.inference_mode():
        return model(x)


def test_torchscript_export_any_size(model, tmp_path):
    res = export_torchscript(model, tmp_path / "m.pt", example_size=(16, 16), check_sizes=[(16, 16), (9, 13)])
    assert res.max_abs_diff <= 1e-4 and res.path.is_file()
    loaded = torch.jit.load(str(res.path))
    x = torch.rand(3, 3, 11, 20)  # a size and batch that were neither traced nor checked
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _eager(model, x), rtol=0, atol=1e-4)


def test_onnx_export_dynamic_axes(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    res = export_onnx(model, tmp_path / "m.onnx", example_size=(16, 16), check_sizes=[(16, 16), (9, 13)])
    assert res.format == "onnx" and res.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 12, 7)
    out = sess.run(None, {"image": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), _eager(model, x), rtol=0, atol=1e-4)
    import onnx
    assert onnx.load(str(res.path)).opset_import[0].version >= 17


def test_failed_verification_leaves_no_file(model, tmp_path):
    with pytest.raises(ExportError, match="differs from the eager model"):
        export_torchscript(model, tmp_path / "m.pt", example_size=(8, 8), check_sizes=[(8, 8)], atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=11)


def test_export_does_not_change_the_model(model, tmp_path):
    m = create_model("jdnet-lite", units=1, scales=1).train().set_attention_impl("reference")
    export_torchscript(m, tmp_path / "m.pt", example_size=(8, 8), check_sizes=[(8, 8)])
    assert m.training and m.impl == "reference"


def test_cli_exports_both_and_reports(model, tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model)
    assert main(["--weights", str(ckpt), "--format", "both", "--out", str(tmp_path / "out" / "jdnet"),
                 "--example-size", "16x16", "--check-size", "16x16", "--check-size", "9x13"]) == 0
    out = capsys.readouterr().out
    assert "torchscript:" in out and "onnx:" in out
    assert (tmp_path / "out" / "jdnet.pt").is_file() and (tmp_path / "out" / "jdnet.onnx").is_file()


def test_cli_errors(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--weights", "x", "--out", "m.pt", "--check-size", "big"])
