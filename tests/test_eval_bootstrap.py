"""The bootstrap over images (eval_tasks/bootstrap.py): draws, mIoU and mAP per draw, intervals, paired
differences, and its place in the compared reports."""
import json

import numpy as np
import pytest
import torch

from jdnet_plugin.eval_tasks.bootstrap import (
    bootstrap_section, cached_detection_replicates, detection_replicates, interval, miou_replicates, paired_difference,
    resample_counts)
from jdnet_plugin.eval_tasks.common import fraction_recovered, recovered_fraction
from jdnet_plugin.eval_tasks.segment import iou_from_confusion


def test_resample_counts_draw_n_with_replacement_reproducibly():
    c = resample_counts(7, replicates=50, seed=3)
    assert c.shape == (50, 7) and (c.sum(1) == 7).all() and (c >= 0).all()
    assert (c.max(1) > 1).any()  # with replacement
    assert np.array_equal(c, resample_counts(7, replicates=50, seed=3))
    assert not np.array_equal(c, resample_counts(7, replicates=50, seed=4))


def _cms(n=6, k=4, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 50, size=(n, k, k + 1))


def test_miou_replicates_match_the_summed_confusion_matrix():
    cms = _cms()
    counts = np.stack([np.ones(6, np.int64), [2, 0, 0, 1, 3, 0]])
    got = miou_replicates(cms, counts)
    for row, value in zip(counts, got):
        iou, present = iou_from_confusion(torch.from_numpy((cms * row[:, None, None]).sum(0)))
        assert value == pytest.approx(float(iou[present].mean()))


def test_miou_ignores_classes_absent_from_the_draw():
    cms = np.zeros((2, 3, 4), np.int64)
    cms[0, 0, 0] = 10  # image 0: class 0 only, right
    cms[1, 1, 2] = 10  # image 1: class 1 predicted as 2
    got = miou_replicates(cms, np.array([[2, 0], [0, 2], [1, 1]]))
    assert got.tolist() == pytest.approx([1.0, 0.0, 0.5])


def _matches():
    """Three images: predictions with IoU-threshold matches, targets, image indices."""
    tp = np.array([[1] * 10, [1] * 5 + [0] * 5, [0] * 10, [1] * 10, [0] * 10], bool)
    return {"tp": tp, "conf": np.array([0.9, 0.8, 0.7, 0.6, 0.5]), "pred_cls": np.array([0, 0, 1, 1, 0.]),
            "pred_image": np.array([0, 0, 1, 2, 2]), "target_cls": np.array([0, 0, 1, 1, 0.]),
            "target_image": np.array([0, 0, 1, 2, 2])}


def test_detection_replicates_equal_ultralytics_on_the_drawn_images():
    from ultralytics.utils.metrics import ap_per_class

    m = _matches()
    counts = np.array([[1, 1, 1], [2, 0, 1], [0, 3, 0]])
    got = detection_replicates(m, counts)
    for r, c in enumerate(counts):
        wp, wt = c[m["pred_image"]], c[m["target_image"]]
        ap = ap_per_class(np.repeat(m["tp"], wp, 0), np.repeat(m["conf"], wp), np.repeat(m["pred_cls"], wp),
                          np.repeat(m["target_cls"], wt))[5]
        assert got["map50_95"][r] == pytest.approx(ap.mean()) and got["map50"][r] == pytest.approx(ap[:, 0].mean())
    assert got["map50_95"][0] != got["map50_95"][1]  # the draw matters


def test_detection_replicates_are_cached_by_matches_and_draws(tmp_path, monkeypatch):
    import jdnet_plugin.eval_tasks.bootstrap as boot

    m, counts = _matches(), np.array([[1, 1, 1], [2, 0, 1]])
    first = cached_detection_replicates(m, counts, tmp_path)
    assert len(list(tmp_path.glob("map-replicates-*.npz"))) == 1
    monkeypatch.setattr(boot, "detection_replicates", lambda *a: pytest.fail("computed again"))
    again = cached_detection_replicates(m, counts, tmp_path)
    assert all(np.array_equal(first[k], again[k]) for k in ("map50", "map50_95"))
    monkeypatch.undo()
    other = cached_detection_replicates(m, counts[::-1], tmp_path)  # other draws: computed, kept apart
    assert other["map50"][0] == pytest.approx(first["map50"][1])
    m["conf"] = m["conf"][::-1].copy()  # other matches: computed again
    cached_detection_replicates(m, counts, tmp_path)
    assert len(list(tmp_path.glob("map-replicates-*.npz"))) == 3


def test_no_draws_no_section_and_negative_draws_refused():
    from jdnet_plugin.eval_tasks.common import EvalError

    counts = resample_counts(3, replicates=0)
    assert counts.shape == (0, 3)
    assert bootstrap_section(["a", "b", "c"], {"clean": {"m": miou_replicates(_cms(3), counts)}}, ("m",)) is None
    with pytest.raises(EvalError, match="draws must be >= 0"):
        resample_counts(3, replicates=-1)


def test_fraction_and_interval():
    f = fraction_recovered(np.array([1.0, 1.0, 0.5]), np.array([0.0, 0.5, 0.5]), np.array([0.5, 1.0, 0.7]))
    assert f[:2].tolist() == [0.5, 1.0] and np.isnan(f[2])  # rain cost nothing in the last draw
    per_metric, notes = recovered_fraction({"a": 1.0, "b": 0.5}, {"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 0.7}, "ab")
    assert per_metric == {"a": 1.0, "b": None} and "rain cost nothing" in notes[0]  # the report's figure, one formula
    assert interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert interval(np.array([1.0, np.nan, np.nan])) is None


def _section(shift=0.0, names=("a", "b", "c")):
    n = len(names)
    counts = resample_counts(n, replicates=200)
    base = {"clean": np.full(200, 0.5), "rainy": np.full(200, 0.1) + counts[:, 0] * 0.01}
    return bootstrap_section(list(names), {**{k: {"m": v} for k, v in base.items()},
                                           "derained": {"m": base["rainy"] + 0.2 + shift}}, ("m",))


def test_paired_difference_pairs_the_same_draws():
    a, b = _section(), _section(shift=0.04)
    d = paired_difference(a, b, "m")
    lo, hi = d["ci95"]
    assert lo > 0 and hi < 0.2 and d["p_b_better"] == 1.0
    assert paired_difference(a, a, "m")["ci95"] == pytest.approx([0.0, 0.0])
    assert paired_difference(a, _section(names=("a", "b", "d")), "m") is None  # other images: not paired
    assert paired_difference(a, b, "other") is None


def test_compare_shows_intervals_and_paired_differences(tmp_path):
    from jdnet_plugin.eval_tasks.common import EvalError
    from jdnet_plugin.eval_tasks.compare import comparison, parse_pairs, render_markdown

    def report(name, shift):
        sec = _section(shift)
        rf = sec["recovered_fraction"]["m"]
        det = {"headline_metric": "m", "recovered_fraction": 0.5 + shift, "recovered_fraction_ci95": rf["ci95"],
               "bootstrap": sec}
        return {"weights": name, "weights_file": name, "weights_sha256": "0" * 64, "quick": False,
                "detection": det, "held_out": {"rain100L": {"input": {"psnr_y": 26.9 + shift * 1e-8}}}}

    c = comparison({"old": report("old", 0.0), "new": report("new", 0.1)})
    json.dumps(c)  # the comparison is written as JSON
    md = render_markdown(c)
    row = next(r for r in c["rows"] if r["label"].startswith("COCO128") and "recovered" in r["label"])
    assert row["ci"]["new"] is not None
    assert "detection, recovered fraction, `new` minus `old`: +0.100" in md
    assert c["paired"]["segmentation"] == []
    assert [(d["base"], d["other"]) for d in c["paired"]["detection"]] == [("old", "new")]

    # chosen pairs (--pair BASE:OTHER): each against its own base, the first report not special
    three = {"old": report("old", 0.0), "new": report("new", 0.1), "newer": report("newer", 0.15)}
    c = comparison(three, parse_pairs(["new:newer", "newer:old"], list(three)))
    got = {(d["base"], d["other"]): d for d in c["paired"]["detection"]}
    assert set(got) == {("new", "newer"), ("newer", "old")}
    assert got[("new", "newer")]["difference"] == pytest.approx(0.05)
    assert got[("newer", "old")]["difference"] == pytest.approx(-0.15) and got[("newer", "old")]["ci95"][1] < 0
    md = render_markdown(c)
    assert "`newer` minus `new`: +0.050" in md and "`old` minus `newer`: -0.150" in md and "minus `old`" not in md
    assert parse_pairs([], ["a", "b", "c"]) == [("a", "b"), ("a", "c")]
    for bad in (["new"], ["new:nope"], ["new:new"], ["old:new", "old:new"]):
        with pytest.raises(EvalError, match="--pair"):
            parse_pairs(bad, list(three))

    # a named pair whose base holds no draws is said so, not dropped
    three["old"]["detection"].pop("bootstrap")
    c = comparison(three, parse_pairs(["old:new"], list(three)))
    (d,) = c["paired"]["detection"]
    assert d["ci95"] is None and d["same_images"] is False and d["difference"] is None
    assert "`new` and `old` hold no bootstrap draws over the same images" in render_markdown(c)
    psnr = next(r for r in c["rows"] if r["label"].startswith("Rain100L test, PSNR"))
    assert psnr["input"] == 26.9  # one input measured to float precision twice is one input
