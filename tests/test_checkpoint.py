"""Checkpoints: this project's format, the authors' layouts, registered weights, clear errors."""
import pytest
import torch

from jdnet_plugin import CheckpointError, create_model, load_model, save_checkpoint
from jdnet_plugin.checkpoint import infer_config, read_checkpoint
from jdnet_plugin.registry import PretrainedWeights, _WEIGHTS, register_weights, resolve_weights

TINY = dict(channels=16, units=2, scales=2)


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def model(randomise):
    return randomise(create_model("jdnet", **TINY))


X = torch.rand(1, 3, 11, 9)


def test_save_load_identical(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model, step=7)
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(_out(loaded, X), _out(model, X))
    assert read_checkpoint(path)["step"] == 7
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("layout", ["raw", "nested", "raw-module", "nested-module"])
def test_authors_layouts(tmp_path, model, layout):
    state = model.state_dict()
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"net": state, "clock_net": 1234, "opt_net": {"state": {}, "param_groups": []}} \
        if layout.startswith("nested") else state
    torch.save(obj, tmp_path / "latest_net")
    loaded = load_model(tmp_path / "latest_net")
    assert loaded.config == model.config
    assert torch.equal(_out(loaded, X), _out(model, X))


@pytest.mark.parametrize("name", ["jdnet", "jdnet-no-sa", "jdnet-no-sa-sc", "jdnet-lite"])
def test_architecture_inferred_from_keys(name):
    model = create_model(name, units=3)
    assert infer_config(model.state_dict()) == model.config


def test_authors_full_size_layout_matches_published_keys(shared_dir):
    ref = {}
    for line in (shared_dir / "docs" / "jdnet-authors-state-dict.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    ours = {k: tuple(v.shape) for k, v in create_model("jdnet").state_dict().items()}
    assert ours == ref


def test_mismatched_checkpoint_error(tmp_path, model):
    state = model.state_dict()
    state.pop("exitBlock.0.bias")
    state["derain_net.conv1x1.0.0.weight"] = torch.zeros(16, 31, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_model(state)
    msg = str(err.value)
    assert "missing keys: exitBlock.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "derain_net.conv1x1.0.0.weight: checkpoint (16, 31, 1, 1) vs model (16, 32, 1, 1)" in msg


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*garbage.pt"):
        load_model(garbage)
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no JDNet state_dict found"):
        load_model(tmp_path / "other.pt")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "notjdnet.pt")
    with pytest.raises(CheckpointError, match="not a JDNet state_dict"):
        load_model(tmp_path / "notjdnet.pt")


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"net": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "evil.pt")


def test_registered_weights_checksum(tmp_path, model, monkeypatch):
    import hashlib

    import jdnet_plugin.registry as registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    path = save_checkpoint(tmp_path / "tiny.pt", model)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(_WEIGHTS, "tiny-test", None)
    register_weights(PretrainedWeights("tiny-test", "tiny.pt", digest, "jdnet"))
    assert torch.equal(_out(load_model("tiny-test"), X), _out(model, X))
    register_weights(PretrainedWeights("tiny-test", "tiny.pt", "0" * 64, "jdnet"))
    with pytest.raises(ValueError, match="corrupt or was changed"):
        resolve_weights("tiny-test")
    with pytest.raises(KeyError, match="unknown weights"):
        resolve_weights("never-registered")


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = create_model("jdnet-lite", units=1, scales=1)
    a, b = save_checkpoint(tmp_path / "a.pt", model), save_checkpoint(tmp_path / "sub" / "b.pt", model)
    assert a.read_bytes() == b.read_bytes()  # a shipped file's sha256 is reproducible from its run
