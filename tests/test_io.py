"""jdnet_plugin.io: EXIF orientation, the decoding path Ultralytics leaves alone."""
import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from jdnet_plugin.io import exif_orientation, read_image, read_rgb


def _stored(h: int = 6, w: int = 9) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", [".png", ".tif", ".webp", ".jpg"])
def test_exif_orientation_applied_like_pil(tmp_path, orientation, ext):
    if ext == ".tif" and int(cv2.__version__.split(".")[0]) < 5:
        pytest.skip("OpenCV 4's TIFF decoder applies only part of the orientation; TIFF is left to OpenCV")
    path = tmp_path / f"o{orientation}{ext}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"lossless": True} if ext == ".webp" else {"quality": 100, "subsampling": 0} if ext == ".jpg" else {}
    Image.fromarray(_stored()).save(path, exif=exif.tobytes(), **kw)
    assert exif_orientation(path.read_bytes()) == (orientation if ext != ".tif" else 1)  # OpenCV does TIFF's
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_rgb(path)
    assert got.shape == expected.shape == ((6, 9, 3) if orientation < 5 else (9, 6, 3))
    tol = 0 if ext != ".jpg" else 12  # JPEG: two decoders
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tol


def test_no_exif_and_unknown_bytes_mean_as_stored(tmp_path):
    Image.fromarray(_stored()).save(tmp_path / "plain.png")
    assert exif_orientation((tmp_path / "plain.png").read_bytes()) == 1
    assert exif_orientation(b"BM not a real bitmap") == 1
    assert exif_orientation(b"\xff\xd8 truncated jpeg") == 1
    np.testing.assert_array_equal(read_image(tmp_path / "plain.png"), _stored())
