"""Shared fixtures: keep every test's writes inside tmp, and find ../shared when it is there."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Ultralytics writes its settings on import; keep them out of the user's home.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
os.environ.setdefault("YOLO_OFFLINE", "1")
# Native kernels compiled by the tests go to a temporary cache.
os.environ.setdefault("JDNET_CACHE_DIR", tempfile.mkdtemp(prefix="jdnet-cache-"))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _threads():
    # Ultralytics drops torch to one thread on import; every test gets the machine's cores back.
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A checkpoint of a tiny random JDNet, for tests that need a weights path."""
    from jdnet_plugin import create_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", create_model("jdnet-lite", units=1, scales=1))


def randomise_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter and BatchNorm statistic (seeded), so that a wrong copy of any of them shows; eval
    mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def randomise():
    """:func:`randomise_weights`, for tests that need models whose every weight matters."""
    return randomise_weights


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED
