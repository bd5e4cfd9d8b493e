"""``jdnet_plugin.averaging`` and ``python -m jdnet_plugin.average``: weight averages of checkpoints."""
from __future__ import annotations

import pytest
import torch

from jdnet_plugin import create_model, load_model, save_checkpoint
from jdnet_plugin.averaging import average_models, average_state_dicts
from jdnet_plugin.cli.average import main


@pytest.fixture
def tiny(randomise):
    def make(seed: int, **overrides):
        torch.manual_seed(seed)
        return randomise(create_model("jdnet-lite", units=1, scales=1, **overrides), seed=seed)
    return make


def test_weighted_mean_of_every_float_tensor_and_counters_from_the_first(tiny):
    a, b = tiny(0).state_dict(), tiny(1).state_dict()
    avg = average_state_dicts([a, b], [3, 1])
    for k, v in a.items():
        if v.is_floating_point():
            assert torch.allclose(avg[k], 0.75 * v + 0.25 * b[k], atol=1e-6), k
            assert avg[k].dtype == v.dtype
        else:
            assert torch.equal(avg[k], v), k
    assert any(not v.is_floating_point() for v in a.values())  # the counters were there to check
    assert not torch.equal(a["derain_net.units.0.san.bn1.running_mean"], b["derain_net.units.0.san.bn1.running_mean"])
    same = average_state_dicts([a, a, a])
    assert all(torch.allclose(same[k].float(), v.float(), atol=1e-6) for k, v in a.items())


@pytest.mark.parametrize("n, coefficients", [(0, None), (2, [1]), (2, [0, 0]), (2, [1, -1]), (2, [float("nan"), 1]),
                                             (2, [float("inf"), 1])])
def test_bad_coefficients_are_refused(tiny, n, coefficients):
    sd = tiny(0).state_dict()
    with pytest.raises(ValueError, match="nothing to average" if n == 0 else "finite, non-negative coefficient"):
        average_state_dicts([sd] * n, coefficients)


def test_other_keys_or_shapes_are_refused(tiny):
    a = tiny(0).state_dict()
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {k: v for k, v in list(a.items())[1:]}])
    k = next(k for k, v in a.items() if v.ndim == 4)
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts([a, {**a, k: a[k][:1]}])


def test_cli_writes_a_loadable_average_that_records_its_sources(tiny, tmp_path):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.pt")
        save_checkpoint(paths[-1], tiny(seed))
    out = tmp_path / "soup.pt"
    assert main([str(p) for p in paths] + ["--out", str(out)]) == 0
    soup = load_model(out)
    expected = average_models(paths)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in soup.state_dict().items())
    a, b = (load_model(p).state_dict() for p in paths)
    k = "enterBlock.0.weight"
    assert torch.allclose(soup.state_dict()[k], (a[k] + b[k]) / 2, atol=1e-6) and not torch.equal(a[k], b[k])
    saved = torch.load(out, weights_only=True)
    assert saved["averaged_from"] == [str(p) for p in paths] and saved["average_coefficients"] == [1.0, 1.0]
    x = torch.rand(1, 3, 24, 24)
    assert soup(x).shape == x.shape
    assert main([str(p) for p in paths] + ["--out", str(out), "--coefficients", "1", "0"]) == 0
    assert all(torch.equal(v, a[k]) for k, v in load_model(out).state_dict().items() if v.is_floating_point())


def test_cli_errors_name_the_problem(tiny, tmp_path, capsys):
    save_checkpoint(tmp_path / "a.pt", tiny(0))
    save_checkpoint(tmp_path / "b.pt", tiny(1, channels=8))
    a = str(tmp_path / "a.pt")
    cases = [([a], "at least two"),
             ([a, a, "--coefficients", "1"], "one finite, non-negative coefficient"),
             ([a, a, "--coefficients", "0", "0"], "not all zero"),
             ([a, a, "--coefficients", "nan", "1"], "finite"),
             ([a, str(tmp_path / "b.pt")], "only one architecture"),
             ([a, str(tmp_path / "missing.pt")], "missing.pt")]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "o.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert ("--coefficients" in err) == ("--coefficients" in argv), (argv, err)
    assert not (tmp_path / "o.pt").exists()
