"""attach_derain / detach_derain on Ultralytics YOLO: predict on every source kind, val, versions, offline."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import jdnet_plugin

pytest.importorskip("ultralytics")
cv2 = pytest.importorskip("cv2")

from jdnet_plugin.integrations import attach_derain, detach_derain, load_yolo  # noqa: E402
from jdnet_plugin.integrations._weights import derain_batch  # noqa: E402
from jdnet_plugin.integrations.ultralytics_hook import (  # noqa: E402
    check_ultralytics, derain_frames, derain_gate_stats, is_derain_attached, letterbox_content)

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return jdnet_plugin.create_model("jdnet-lite", units=1, scales=1).eval()


@pytest.fixture(scope="module")
def yolo():
    torch.manual_seed(0)
    return load_yolo("yolov8n.yaml")


@pytest.fixture
def kw(tmp_path) -> dict:
    return dict(imgsz=IMGSZ, save=False, project=str(tmp_path / "runs"), verbose=False, device="cpu")


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


class Spy:
    """Records what the network is called with (a forward pre-hook on the torch module)."""

    def __init__(self, module: torch.nn.Module):
        self.inputs: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(lambda m, a: self.inputs.append(a[0].detach().clone()))

    def take(self) -> list[torch.Tensor]:
        out, self.inputs = self.inputs, []
        return out


def _network(yolo, kw) -> torch.nn.Module:
    """The module predict calls: the predictor's backend (made by a first predict), not ``yolo.model``,
    which a backend may have copied."""
    if yolo.predictor is None:
        yolo.predict(_frames(1)[0], **kw)
    return yolo.predictor.model


def _predict(yolo, source, kw, spy, stream=False):
    spy.take()
    res = yolo.predict(source, stream=stream, **kw)
    res = list(res)
    return res, spy.take()


def test_version_range(monkeypatch, yolo, tiny):
    import ultralytics

    assert check_ultralytics() is ultralytics
    for bad in ("8.2.103", "8.5.0", "9.0.1"):
        with pytest.raises(RuntimeError, match=r"ultralytics>=8\.3\.0,<8\.5"):
            check_ultralytics(bad)
    monkeypatch.setattr(ultralytics, "__version__", "8.2.103")
    with pytest.raises(RuntimeError, match="8.2.103 is not supported"):
        attach_derain(yolo, model=tiny)
    assert not is_derain_attached(yolo)


def test_load_yolo_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="download"):
        load_yolo("yolov8n.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_yolo(tmp_path / "missing.pt")
    assert time.perf_counter() - t0 < 5
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written


def test_missing_derain_weights_fail_fast(yolo, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        attach_derain(yolo, tmp_path / "nope.pt")
    assert not is_derain_attached(yolo)


def test_hook_changes_input_keeps_caller_array_and_detach_restores(yolo, tiny, kw):
    spy = Spy(yolo.model)
    try:
        img = _frames(1)[0]
        before = img.copy()
        plain, (x_plain,) = _predict(yolo, img, kw, spy)
        attach_derain(yolo, model=tiny)
        assert is_derain_attached(yolo)
        hooked, (x_hooked,) = _predict(yolo, img, kw, spy)
        assert np.array_equal(img, before)  # the caller's array is untouched
        assert not torch.allclose(x_hooked, x_plain)  # the detector saw something else
        derained = derain_frames([img], tiny)[0]
        assert np.array_equal(hooked[0].orig_img, derained)  # orig_img holds the derained frame
        detach_derain(yolo)
        # what the detector saw equals predicting the derained frame by hand
        manual, (x_manual,) = _predict(yolo, derained, kw, spy)
        torch.testing.assert_close(x_hooked, x_manual)
        torch.testing.assert_close(hooked[0].boxes.data, manual[0].boxes.data)
        # detached: original behaviour, bit for bit
        again, (x_again,) = _predict(yolo, img, kw, spy)
        assert torch.equal(x_again, x_plain)
        assert torch.equal(again[0].boxes.data, plain[0].boxes.data)
        assert not detach_derain(yolo)  # a second detach is a no-op
        assert not any(fn.__qualname__.startswith("_Hook") for fns in yolo.callbacks.values() for fn in fns)
    finally:
        detach_derain(yolo)
        spy.handle.remove()


def _derained_input(tiny, x: torch.Tensor) -> torch.Tensor:
    """A letterboxed batch with the part inside the padding derained (what the hook does to network inputs)."""
    y0, y1, x0, x1 = letterbox_content(x)
    out = x.clone()
    out[..., y0:y1, x0:x1] = derain_batch(tiny, x[..., y0:y1, x0:x1].contiguous())
    return out


def test_derain_at_network_input_and_gate(yolo, tiny, kw):
    spy = Spy(_network(yolo, kw))
    try:
        img = _frames(1, h=96, w=128)[0]
        plain, (x_plain,) = _predict(yolo, img, kw, spy)
        attach_derain(yolo, model=tiny, at="input")
        hooked, (x_hooked,) = _predict(yolo, img, kw, spy)
        # the detector saw its own letterboxed input, the part inside the padding derained; orig_img stays
        # the caller's frame
        y0, y1, x0, x1 = letterbox_content(x_plain)
        assert (y1 - y0) * (x1 - x0) < x_plain.shape[-2] * x_plain.shape[-1]  # 96x128 in 64x64: padded rows
        torch.testing.assert_close(x_hooked, _derained_input(tiny, x_plain))
        assert torch.equal(x_hooked[..., :y0, :], x_plain[..., :y0, :])  # the padding stays the fill value
        assert np.array_equal(hooked[0].orig_img, img)
        attach_derain(yolo, model=tiny, at="frame")  # re-attaching drops the input wrapper
        _, (x_frame,) = _predict(yolo, img, kw, spy)
        detach_derain(yolo)
        _, (x_manual,) = _predict(yolo, derain_frames([img], tiny)[0], kw, spy)
        torch.testing.assert_close(x_frame, x_manual)
        again, (x_again,) = _predict(yolo, img, kw, spy)
        assert torch.equal(x_again, x_plain)  # detached: the predictor's preprocess is the plain one again
        for at in ("frame", "input"):
            attach_derain(yolo, model=tiny, at=at, gate=1e9)  # no frame scores that high: nothing derained
            _, (x_gated,) = _predict(yolo, img, kw, spy)
            assert torch.equal(x_gated, x_plain)
            assert (derain_gate_stats(yolo).derained, derain_gate_stats(yolo).passed) == (0, 1)
        with pytest.raises(ValueError, match="at must be"):
            attach_derain(yolo, model=tiny, at="letterbox")
        with pytest.raises(ValueError, match="gate must be"):
            attach_derain(yolo, model=tiny, gate="maybe")
    finally:
        detach_derain(yolo)
        spy.handle.remove()
    with pytest.raises(ValueError, match="no derainer"):
        derain_gate_stats(yolo)


def test_attach_twice_replaces(yolo, tiny):
    other = jdnet_plugin.create_model("jdnet-lite", units=1, scales=1)
    try:
        attach_derain(yolo, model=tiny)
        n = len(yolo.callbacks["on_predict_batch_start"])
        attach_derain(yolo, model=other)
        assert len(yolo.callbacks["on_predict_batch_start"]) == n
        assert yolo._jdnet_derain.derainer is other
    finally:
        detach_derain(yolo)


def _check_sources(yolo, tiny, kw, source, n, stream=False, tol=0, module=None):
    """With the hook, each result's orig_img is the derained version of the plain run's frame (``tol`` in
    uint8 levels)."""
    spy = Spy(module if module is not None else _network(yolo, kw))
    try:
        plain, x_plain = _predict(yolo, source, kw, spy, stream)
        assert len(x_plain) >= 1  # the spy sees the network's inputs
        attach_derain(yolo, model=tiny)
        hooked, x_hooked = _predict(yolo, source, kw, spy, stream)
    finally:
        detach_derain(yolo)
        spy.handle.remove()
    assert len(plain) == len(hooked) == n
    for p, h in zip(plain, hooked):
        expected = derain_frames([p.orig_img], tiny)[0]
        assert np.abs(h.orig_img.astype(int) - expected.astype(int)).max() <= tol
    assert len(x_plain) == len(x_hooked) and not any(torch.allclose(a, b) for a, b in zip(x_plain, x_hooked))


def test_sources_files_folder_list(yolo, tiny, kw, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(_frames(2, seed=1)):
        cv2.imwrite(str(folder / f"{i}.png"), f)
    _check_sources(yolo, tiny, kw, str(folder / "0.png"), 1)
    _check_sources(yolo, tiny, kw, str(folder), 2)
    _check_sources(yolo, tiny, kw, _frames(2, seed=2), 2)


def test_source_tensor(yolo, tiny, kw):
    x = torch.rand(2, 3, 64, 64)
    x0 = x.clone()
    _check_sources(yolo, tiny, kw, x, 2, tol=1)  # derained as float, then made uint8 by Ultralytics
    assert torch.equal(x, x0)


def test_source_video_stream(yolo, tiny, kw, tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for f in _frames(2, seed=3):
        writer.write(f)
    writer.release()
    _check_sources(yolo, tiny, kw, str(path), 2, stream=True)


def test_segment_task(tiny, kw):
    seg = load_yolo("yolov8n-seg.yaml")
    assert seg.task == "segment"
    img = _frames(1, seed=4)[0]
    _check_sources(seg, tiny, kw, img, 1)


def _tiny_dataset(root: Path) -> Path:
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(4):
        img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        img[16:48, 8 + 4 * i:40 + 4 * i] = 220
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        (root / "labels" / f"{i}.txt").write_text(f"0 {(24 + 4 * i) / 64:.4f} 0.5 0.5 0.5\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n  0: block\n")
    return yaml


def test_val_on_derained_inputs(yolo, tiny, tmp_path):
    data = _tiny_dataset(tmp_path / "ds")
    args = dict(data=str(data), imgsz=IMGSZ, batch=2, plots=False, save_json=False, device="cpu",
                project=str(tmp_path / "runs"), verbose=False, workers=0)
    spy = Spy(yolo.model)
    try:
        spy.take()
        m_plain = yolo.val(**args)
        x_plain = spy.take()
        attach_derain(yolo, model=tiny)
        m_hooked = yolo.val(**args)
        x_hooked = spy.take()
    finally:
        detach_derain(yolo)
        spy.handle.remove()
    x_plain = [x for x in x_plain if x.shape[0] == 2]  # the batches, not a warm-up call
    x_hooked = [x for x in x_hooked if x.shape[0] == 2]
    assert len(x_plain) == len(x_hooked) == 2
    for a, b in zip(x_plain, x_hooked):
        torch.testing.assert_close(b, _derained_input(tiny, a))  # the validator's letterboxed batch, derained
    assert 0 <= m_hooked.box.map <= 1 and 0 <= m_plain.box.map <= 1
    assert all(p.is_relative_to(tmp_path) for p in [Path(m_hooked.save_dir)])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_detector(shared_dir, tiny, kw):
    path = shared_dir / "models" / "yolov5n-coco.torchscript"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    det = load_yolo(path, task="detect")
    kw = {**kw, "imgsz": 128}
    img = _frames(1, 96, 128, seed=6)[0]
    before = img.copy()
    plain = det.predict(img, **kw)
    # the loaded TorchScript module lives in the predictor's backend
    _check_sources(det, tiny, kw, img, 1, module=det.predictor.model)
    try:
        attach_derain(det, model=tiny)
        hooked = det.predict(img, **kw)
        detach_derain(det)
        again = det.predict(img, **kw)
    finally:
        detach_derain(det)
    assert np.array_equal(img, before)
    assert torch.equal(again[0].boxes.data, plain[0].boxes.data)
    assert np.array_equal(hooked[0].orig_img, derain_frames([img], tiny)[0])


def test_letterbox_content():
    x = torch.full((2, 3, 64, 64), 114 / 255)
    x[0, :, 10:50, 3:60] = 0.0
    x[1, :, 12:40, 5:61] = 1.0
    assert letterbox_content(x) == (10, 50, 3, 61)  # the union over the batch
    u = torch.full((1, 3, 8, 8), 114, dtype=torch.uint8)
    assert letterbox_content(u) == (0, 8, 0, 8)  # all fill: the whole image
    u[..., 2:5, :] = 7
    assert letterbox_content(u) == (2, 5, 0, 8)
