"""The composable rain generator: every preset, each source (noise-seeded, streak images, line kernels),
accumulation, camera effects, mixtures and probabilities."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from jdnet_plugin.rain import (PRESETS, Camera, Haze, Mixture, NoiseStreaks, RainParams, StreakImages,
                               StreakImagesNotFound, StreakLayer, add_rain, add_rain_pair, draw_params,
                               list_rain_presets, make_generator, noise_streaks, preset_digest)
from jdnet_plugin.rain.sources import STREAKS_ENV, image_streaks


def _scene(h: int = 96, w: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0] * 0.5 + 0.1


def _gradients(r: torch.Tensor) -> tuple[float, float]:
    """Mean |d/dx| and |d/dy|: vertical streaks change across x, not along y."""
    return float((r[:, 1:] - r[:, :-1]).abs().mean()), float((r[1:] - r[:-1]).abs().mean())


def _correlation_along(layers: list[torch.Tensor], dy: int, dx: int) -> float:
    """Mean over rain layers of each one's highest correlation with itself shifted by ``dy`` rows and at most
    ``dx`` columns either way (streaks lean), or by ``dx`` columns alone where ``dy`` is 0."""
    shifts = [(dy, s) for s in range(-dx, dx + 1)] if dy else [(0, dx)]

    def best(r: torch.Tensor) -> float:
        return max(float(torch.corrcoef(torch.stack([r.flatten(), torch.roll(r, s, (0, 1)).flatten()]))[0, 1])
                   for s in shifts)
    return float(np.mean([best(r) for r in layers]))


@pytest.fixture()
def streak_dir(tmp_path, monkeypatch):
    """A folder of two grey streak images: thin vertical lines on black."""
    img = np.zeros((80, 120), np.uint8)
    img[:, ::7] = 200
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}-4.png"), np.roll(img, 3 * i, axis=1))
    monkeypatch.setenv(STREAKS_ENV, str(tmp_path))  # read at each call
    return tmp_path


@pytest.mark.parametrize("preset", list_rain_presets())
def test_every_preset_rains_deterministically_in_range(preset, streak_dir):
    x = _scene()
    outs = [add_rain(x, preset, seed=s) for s in range(4)]
    assert all(o.shape == x.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert torch.equal(outs[0], add_rain(x, preset, seed=0))
    assert sum(not torch.equal(o, x) for o in outs) >= 3  # a component may be absent now and then
    rainy, target = add_rain_pair(x, preset, seed=0)
    assert torch.equal(rainy, outs[0]) and target.shape == x.shape


def test_noise_streaks_follow_angle_density_and_brightness():
    def layer(**kw):
        return noise_streaks(128, 128, NoiseStreaks(**{"density": 0.02, "length": 30, "width": 0.5, **kw}),
                             make_generator(0))
    vertical, horizontal = layer(angle=0), layer(angle=90)
    gx, gy = _gradients(vertical)
    assert gx > 3 * gy
    hx, hy = _gradients(horizontal)
    assert hy > 3 * hx
    # Levels: the brightest streaks reach `brightness`; denser seeds cover more of the image.
    assert float(layer(brightness=0.6).max()) == pytest.approx(0.6, abs=1e-5)
    assert (layer(density=0.05) > 0.05).float().mean() > (layer(density=0.005) > 0.05).float().mean()
    assert layer(density=0.0).abs().max() == 0


def test_streak_images_crop_rotate_and_fail_clearly(streak_dir, tmp_path_factory):
    params = StreakImages(count=1, scale=1.0, brightness=1.0)
    upright = image_streaks(64, 64, dataclasses.replace(params, angle=0), make_generator(1))
    turned = image_streaks(64, 64, dataclasses.replace(params, angle=90), make_generator(1))
    assert upright.max() > 0.3 and upright.shape == (64, 64)
    ux, uy = _gradients(upright)
    tx, ty = _gradients(turned)
    assert ux > 5 * uy and ty > 5 * tx
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(StreakImagesNotFound, match=str(empty)):
        image_streaks(8, 8, StreakImages(root=str(empty)), make_generator(0))
    with pytest.raises(StreakImagesNotFound, match="nowhere"):
        add_rain(_scene(), RainParams(layers=(), image_layers=(StreakImages(root="/nowhere"),)), seed=0)


def test_veil_is_deeper_towards_the_top():
    params = RainParams(layers=(), haze=Haze(atmospheric_light=0.9, transmission=0.7, depth=2.0))
    y = add_rain(torch.zeros(3, 64, 64), params, seed=0)
    assert y[:, :8].mean() > y[:, -8:].mean() + 0.1  # far (top) is veiled more
    flat = add_rain(torch.zeros(3, 64, 64), dataclasses.replace(params, haze=Haze(0.9, 0.7)), seed=0)
    assert torch.allclose(flat, torch.full_like(flat, 0.27))
    grey = add_rain(_scene(), RainParams(layers=(), haze=Haze(0.5, 0.5, desaturate=1.0)), seed=0)
    colour = add_rain(_scene(), RainParams(layers=(), haze=Haze(0.5, 0.5)), seed=0)
    assert grey.std(0).mean() < 0.6 * colour.std(0).mean()  # colour lost beneath the veil


def test_camera_noise_on_both_jpeg_on_rainy_only():
    x = _scene()
    noisy = RainParams(layers=(), camera=Camera(noise=0.05))
    rainy, target = add_rain_pair(x, noisy, seed=0)
    assert torch.equal(rainy, target) and (rainy - x).abs().mean() > 0.01  # the same noise on both
    jpeg = RainParams(layers=(), camera=Camera(jpeg=20))
    rainy, target = add_rain_pair(x, jpeg, seed=0)
    assert torch.equal(target, x) and not torch.equal(rainy, x)
    blurred = RainParams(layers=(), camera=Camera(blur=1.5))
    rainy, target = add_rain_pair(x, blurred, seed=0)
    assert torch.equal(rainy, target) and not torch.equal(target, x)


def test_camera_sharpening_gives_streaks_dark_flanks_on_both_images():
    grey = torch.full((3, 64, 64), 0.4)
    line = RainParams(layers=(StreakLayer(density=0.002, length=40, width=1.0, brightness=0.3),), blend="add")
    plain, _ = add_rain_pair(grey, line, seed=0)
    sharp, target = add_rain_pair(grey, dataclasses.replace(line, camera=Camera(sharpen=1.0)), seed=0)
    assert plain.min() >= 0.4 - 1e-6  # rain alone only brightens
    assert sharp.min() < 0.4 - 0.05 and sharp.max() > plain.max()  # sharpened: dark flanks, brighter cores
    assert torch.allclose(target, grey)  # a flat image has nothing to sharpen
    x = _scene()
    rainy, target = add_rain_pair(x, RainParams(layers=(), camera=Camera(sharpen=1.5, sharpen_sigma=(0.6, 1.4))),
                                  seed=0)
    assert torch.equal(rainy, target) and (target - x).abs().max() > 0.005  # the clean target is sharpened alike
    assert Camera(sharpen_sigma=1.0).scaled(2.0).sharpen_sigma == 2.0
    with pytest.raises(ValueError, match="sharpen"):
        Camera(sharpen=-1)


def test_presets_without_sharpening_draw_the_rain_they_drew_before_it():
    """Sums of rainy image and target for seed 5, as drawn before `Camera.sharpen` existed (commit 2093403):
    presets whose camera does not sharpen consume the random stream as before."""
    x = _scene()
    before = {"veil": (17032.153529495, 9050.698210425675), "long": (9546.80807043612, 9053.757993675768),
              "heavy": (17056.797217845917, 9051.830197125673)}
    for name, sums in before.items():
        rainy, target = add_rain_pair(x, name, seed=5)
        assert (float(rainy.double().sum()), float(target.double().sum())) == pytest.approx(sums, rel=1e-5), name


def test_mixture_camera_replaces_the_drawn_presets_camera_fields():
    g = make_generator(0)
    over_long = Mixture(("long",), camera=(("sharpen", (0.5, 1.0)),))
    cam = over_long.draw(g).camera
    assert cam.sharpen == (0.5, 1.0) and cam.jpeg == PRESETS["long"].camera.jpeg  # the others kept
    assert Mixture(("light",), camera={"sharpen": 1}).draw(g).camera == Camera(sharpen=1.0)  # none: one made
    with pytest.raises(TypeError, match="sharpn"):
        Mixture(("light",), camera=(("sharpn", 1),))
    sharp = PRESETS["broad-sharp"]
    assert sharp.choices == ("broad-long",) and all(d.camera.sharpen == (0.0, 1.5) for d in
                                                     (sharp.draw(g) for _ in range(20)))
    outer = Mixture(("broad-sharp",), camera={"sharpen": 0.5}).draw(g).camera  # nested: the outer mixture wins
    assert outer.sharpen == 0.5 and outer.sharpen_sigma == (0.6, 1.4)


def test_over_blend_occludes_bright_regions_and_lights_dark_ones():
    half = torch.zeros(3, 64, 64)
    half[..., 32:] = 1.0  # black left, white right: the drops' radiance lies between
    layer = StreakLayer(density=0.01, length=30, width=1.0, brightness=0.6)
    over = add_rain(half, RainParams(layers=(layer,), blend="over"), seed=0)
    added = add_rain(half, RainParams(layers=(layer,), blend="add"), seed=0)
    assert torch.equal(added[..., 32:], half[..., 32:])  # added rain cannot show on white
    assert over[..., 32:].min() < 0.9 and over[..., :32].max() > 0.2  # occluding rain darkens white, lights black
    # Its radiance is the mean colour (0.5) at least part of the way (0.3 to 1.0) to white: 0.65 or more.
    assert float(over[..., 32:].min()) >= 1 - 0.6 * (1 - 0.65) - 1e-6
    # The formula, on two flat images a, b with the same draws (streaks R, radiance L = m + t (1 - m), m the mean):
    # out_a - out_b = (a - b)(1 - t R) and out_a - a = t R (1 - a). Added rain would give out_a - out_b = a - b.
    a, b = torch.full((3, 48, 48), 0.2), torch.full((3, 48, 48), 0.6)
    out_a, out_b = (add_rain(img, RainParams(layers=(layer,), blend="over"), seed=1) for img in (a, b))
    t_r = (out_a - 0.2) / 0.8
    assert float(t_r.max()) > 0.1
    torch.testing.assert_close((out_a - out_b) / (0.2 - 0.6), 1 - t_r, atol=1e-5, rtol=0)
    always, never = Mixture(("light",), over=1.0), Mixture(("light",), over=0.0)
    g = make_generator(0)
    assert always.draw(g).blend == "over" and never.draw(g).blend == PRESETS["light"].blend
    shares = [PRESETS["broad-over"].draw(g).blend == "over" for _ in range(400)]
    assert 0.4 < np.mean(shares) < 0.6
    for bad in (1.5, "0.5", True):
        with pytest.raises(ValueError, match="over"):
            Mixture(("light",), over=bad)


def test_mixtures_without_an_over_share_draw_the_rain_they_drew_before_it():
    """Sums of rainy images and targets for seed 5, as drawn before `Mixture.over` existed (commit a52761a), for a
    uniform and a weighted mixture; their digests do not name the share either."""
    x = _scene()
    xs = torch.stack([x, x.flip(-1), x.flip(-2)])
    before = [(39390.19398969412, 27155.49059137702), (52493.31848549843, 27155.49059137702)]
    for preset, sums in zip(("mixed", Mixture(("light", "heavy"), (1.0, 3.0))), before):
        rainy, target = add_rain_pair(xs, preset, seed=5)
        assert (float(rainy.double().sum()), float(target.double().sum())) == pytest.approx(sums, rel=1e-9)
    assert preset_digest("mixed") == "cd78fefb73ff19ee"  # as before: evaluation caches keyed by it stay valid
    assert preset_digest(Mixture(("light",), over=0.5)) != preset_digest(Mixture(("light",)))


def test_probability_blend_and_mixture_weights():
    x = _scene()
    absent = RainParams(layers=(StreakLayer(density=0.01, p=0.0),), noise_layers=(NoiseStreaks(p=0.0),))
    assert torch.equal(add_rain(x, absent, seed=0), x)
    layer = NoiseStreaks(density=0.02, brightness=0.5)
    added = add_rain(x, RainParams(layers=(), noise_layers=(layer,), blend="add"), seed=0)
    screened = add_rain(x, RainParams(layers=(), noise_layers=(layer,), blend="screen"), seed=0)
    assert (added - x).sum() > (screened - x).sum() > 0  # a screen blend brightens less
    only_heavy = Mixture(("light", "heavy"), (0.0, 1.0))
    g = make_generator(0)
    assert all(only_heavy.draw(g) is PRESETS["heavy"] for _ in range(10))
    assert draw_params("heavy", g, 2.0).layers[0].length == PRESETS["heavy"].scaled(2.0).layers[0].length
    with pytest.raises(ValueError, match="weights"):
        Mixture(("light",), (1.0, 2.0))
    with pytest.raises(ValueError, match="p must"):
        NoiseStreaks(p=1.5)
    with pytest.raises(ValueError, match="blend"):
        RainParams(blend="multiply")


def test_broad_covers_all_sources(streak_dir):
    g = make_generator(0)
    drawn = [PRESETS["broad"].draw(g) for _ in range(200)]
    assert any(p.noise_layers for p in drawn) and any(p.image_layers for p in drawn)
    assert any(p.camera for p in drawn) and any(p.haze for p in drawn) and any(p.layers for p in drawn)


def test_missing_streak_images_fail_before_any_work(tmp_path, monkeypatch):
    from jdnet_plugin.data import DatasetError, make_dataset
    from jdnet_plugin.rain import check_rain_sources
    from jdnet_plugin.rain.sources import StreakImagesNotFound

    monkeypatch.setenv(STREAKS_ENV, str(tmp_path / "none"))
    check_rain_sources("light")  # line kernels only: needs nothing
    for preset in ("garg-nayar", "broad"):  # broad: through its mixture's choices
        with pytest.raises(StreakImagesNotFound, match="none"):
            check_rain_sources(preset)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="streak images"):
        make_dataset(tmp_path, patch_size=8, synthetic_rain="broad")


def test_long_streaks_are_longer_and_drops_wider():
    """`long`: streaks that stay correlated far along their direction; `drops`: blobs wider than fine streaks."""
    x = torch.full((3, 320, 480), 0.3)
    layers = {n: [(add_rain(x, n, seed=s) - x).mean(0) for s in range(3)] for n in ("long", "streaks", "drops")}
    assert _correlation_along(layers["long"], 60, 20) > _correlation_along(layers["streaks"], 60, 20) + 0.2
    assert _correlation_along(layers["drops"], 0, 2) > _correlation_along(layers["streaks"], 0, 2) + 0.2


def test_slant_streaks_run_along_their_lean():
    """`slant` leaned 45 degrees (its widest is 50): streaks correlated 30 rows along the diagonal, not upright."""
    slant = PRESETS["slant"]
    lean = dataclasses.replace(slant, layers=(dataclasses.replace(slant.layers[0], angle=45.0, angle_jitter=0.0),),
                               camera=None)
    x = torch.full((3, 160, 240), 0.2)
    layers = [(add_rain(x, lean, seed=s) - x).mean(0) for s in range(3)]

    def corr(dy: int, dx: int) -> float:
        return float(np.mean([float(torch.corrcoef(torch.stack([r.flatten(), torch.roll(r, (dy, dx), (0, 1))
                                                                .flatten()]))[0, 1]) for r in layers]))
    along = max(corr(30, 30), corr(30, -30))
    assert along > corr(30, 0) + 0.2 and along > 0.2
    assert abs(slant.layers[0].angle[0]) >= 45 and slant.layers[0].angle[1] >= 45


def test_soft_streaks_are_fainter_and_softer_than_fine_streaks():
    """`soft` (stage 21): its streaks' layer dimmer than `streaks`' and blurred across (neighbouring columns more
    alike); the veil and camera left out so that the streaks alone are compared."""
    x = torch.full((3, 320, 480), 0.3)
    bare = {n: dataclasses.replace(PRESETS[n], haze=None, camera=None) for n in ("soft", "streaks")}
    layers = {n: [(add_rain(x, p, seed=s) - x).mean(0) for s in range(3)] for n, p in bare.items()}
    mean = {n: float(torch.stack(v).mean()) for n, v in layers.items()}
    assert 0 < mean["soft"] < 0.8 * mean["streaks"]
    assert _correlation_along(layers["soft"], 0, 1) > _correlation_along(layers["streaks"], 0, 1) + 0.1
