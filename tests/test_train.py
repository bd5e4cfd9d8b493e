"""``python -m jdnet_plugin.train``: a short CPU run, checkpoints, resume after SIGKILL, SIGTERM, DDP on gloo."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jdnet_plugin import load_model
from jdnet_plugin.cli.train import main
from jdnet_plugin.io import write_rgb
from jdnet_plugin.training import Trainer, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "jdnet-lite", "--units", "1", "--scales", "1", "--batch-size", "2", "--patch-size", "16",
        "--workers", "0", "--threads", "1", "--no-tensorboard", "--no-progress"]


@pytest.fixture
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(4):
        clean = rng.integers(0, 200, (24, 28, 3), dtype=np.uint8)
        streaks = (rng.random((24, 28, 1)) > 0.9) * 50
        write_rgb(root / "norain" / f"norain-{i + 1:03d}.png", clean)
        write_rgb(root / "rain" / f"rain-{i + 1:03d}.png", (clean + streaks).astype(np.uint8))
    return root


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited (rc {proc.returncode}) before {path.name} appeared: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.005)


def test_cli_trains_writes_everything_and_loads(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data", str(data), "--val", str(data), "--out", str(out), "--steps", "6", "--save-every", "2",
            "--snapshot-every", "3", "--val-every", "3", "--log-every", "2", *TINY, "--tensorboard", "--progress"]
    assert main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"latest.pt", "final.pt", "best.pt", "step_3.pt", "step_6.pt", "config.yaml", "log.jsonl", "tb"} <= names
    assert not [n for n in names if ".tmp-" in n]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tb")).Reload().Tags()
    assert {"train/loss", "lr", "steps_per_s", "val/psnr", "val/ssim"} <= set(tb["scalars"])
    assert tb["images"] == ["val/rainy|derained|clean"]
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the loss

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps"] == 6 and cfg["model"] == {"units": 1, "scales": 1} and cfg["lr"] == 5e-4
    assert cfg["data"] == [str(data.resolve())]

    records = _log(out)
    assert records[0]["event"] == "start" and f"{os.cpu_count()} CPUs" in records[0]["machine"]  # what ran it
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6] and all(r["steps_per_s"] > 0 for r in train)
    # MultiStepLR x0.1 at 60 % and 80 % of 6 steps (steps 4 and 5)
    assert [r["lr"] for r in train] == pytest.approx([5e-4, 5e-5, 5e-6])
    val = [r for r in records if "val_psnr" in r]
    assert [r["step"] for r in val] == [3, 6] and all(10 < r["val_psnr"] < 100 and 0 < r["val_ssim"] <= 1 for r in val)

    ckpt = torch.load(out / "final.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["sampler_position"] == 12 and ckpt["train_config"]["loss"] == "ssim"
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(ckpt)
    assert torch.load(out / "step_3.pt", weights_only=True)["step"] == 3
    model = load_model(out / "final.pt")
    assert model.config.units == 1 and model.config.channels == 16
    x = torch.rand(1, 3, 20, 24)
    assert model(x).shape == x.shape
    assert torch.equal(load_model(out / "latest.pt").state_dict()["enterBlock.0.weight"],
                       model.state_dict()["enterBlock.0.weight"])


def test_the_command_keeps_freed_memory_on_the_cpu_and_the_library_does_not(data, tmp_path, monkeypatch):
    """The train command owns its process, so it sets the allocator (as the derain commands do); a Trainer
    embedded in someone else's program never does."""
    import jdnet_plugin.cli.train as cli_train
    import jdnet_plugin.utils.host_memory as host_memory

    calls = []
    monkeypatch.setattr(cli_train, "keep_freed_memory", lambda **kw: calls.append(("cli", kw)) or True)
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda **kw: calls.append(("library", kw)) or True)
    argv = ["--data", str(data), "--out", str(tmp_path / "cli"), "--steps", "1", "--device", "cpu", *TINY]
    assert main(argv) == 0
    assert calls == [("cli", {"large_blocks": True})]  # training repeats its large allocations every step
    cfg = load_config(None, {"data": [str(data)], "out": str(tmp_path / "lib"), "steps": 1, "device": "cpu",
                             "preset": "jdnet-lite", "patch_size": 16, "batch_size": 2, "workers": 0, "threads": 1,
                             "tensorboard": False, "progress": False, "model": {"units": 1, "scales": 1}})
    Trainer(cfg).fit()
    assert calls == [("cli", {"large_blocks": True})]


@pytest.mark.parametrize("scale", [[], ["1", "1.5"]])  # windows up to 24 px clamped to the 20-px side
def test_synthetic_rain_from_clean_tree_with_workers(tmp_path, scale):
    rng = np.random.default_rng(1)
    for i, sub in enumerate(["a", "b/c", "b"]):
        write_rgb(tmp_path / "clean" / sub / f"{i}.jpg", rng.integers(0, 255, (20, 22, 3), dtype=np.uint8))
    out = tmp_path / "run"
    argv = ["--data", str(tmp_path / "clean"), "--synthetic-rain", "mixed", "--out", str(out), "--steps", "3",
            "--loss", "l1", *TINY, "--workers", "1", *(["--render-scale", *scale] if scale else [])]
    assert main(argv) == 0
    ckpt = torch.load(out / "final.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["train_config"]["synthetic_rain"] == "mixed"
    assert ckpt["train_config"]["render_scale"] == ([float(v) for v in scale] if scale else 1.0)
    assert _log(out)[0]["train_size"] == 3


def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    args = ["--data", str(data), "--steps", "40", "--save-every", "2", "--log-every", "1", "--seed", "7", *TINY]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jdnet_plugin.train", "--out", str(out), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(out / "latest.pt", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists(), "the run finished before it was killed; nothing was tested"
    saved = torch.load(out / "latest.pt", weights_only=True)
    assert saved["step"] % 2 == 0 and 2 <= saved["step"] < 40

    # the next run resumes at the saved step with the saved model, optimiser, scheduler and RNG
    from jdnet_plugin.cli.train import build_parser, overrides_from_args

    cfg = load_config(overrides=overrides_from_args(build_parser().parse_args(["--out", str(out), *args])))
    trainer = Trainer(cfg)
    assert trainer.setup() == saved["step"]
    state, expected = trainer.optimizer.state_dict()["state"], saved["optimizer"]["state"]
    assert state.keys() == expected.keys() and len(state) > 0
    for k in expected:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[k][name], expected[k][name])
    assert trainer.scheduler.last_epoch == saved["step"]
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert all(torch.equal(v, saved["model"][k]) for k, v in trainer.model.state_dict().items())
    assert trainer.fit()["step"] == 40
    assert [r["step"] for r in _log(out) if "train_loss" in r] == list(range(1, 41))  # no replayed steps

    # the same 40 steps without interruption give the same weights
    assert main(["--out", str(tmp_path / "straight"), *args]) == 0
    resumed = load_model(out / "final.pt").state_dict()
    straight = load_model(tmp_path / "straight" / "final.pt").state_dict()
    for k in straight:
        assert torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5), k


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_latest_and_exits_cleanly(data, tmp_path, capsys, sig, code):
    out = tmp_path / "run"
    before = signal.getsignal(sig)

    def interrupt() -> None:  # as a scheduler or Ctrl-C would, once the run is under way
        while not (out / "latest.pt").exists():
            time.sleep(0.005)
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    rc = main(["--data", str(data), "--out", str(out), "--steps", "100000", "--save-every", "3", *TINY])
    thread.join(timeout=5)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    step = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert step >= 3
    assert _log(out)[-1]["event"] == f"stopped by {sig.name}" and _log(out)[-1]["step"] == step
    assert signal.getsignal(sig) is before  # the handler was given back


def test_resume_refuses_other_settings_and_fresh_starts_over(data, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--data", str(data), "--out", str(out), "--steps", "2", *TINY]
    assert main(base) == 0
    assert main([*base[:-len(TINY)], *TINY, "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "batch_size: 2 (saved) vs 3 (now)" in err and "--fresh" in err
    assert main([*base, "--steps", "3", "--fresh"]) == 0
    assert [r["event"] for r in _log(out) if "event" in r] == ["start", "done"]
    assert torch.load(out / "final.pt", weights_only=True)["step"] == 3
    # an unchanged command on a finished run does nothing more
    assert main([*base, "--steps", "3"]) == 0
    assert torch.load(out / "final.pt", weights_only=True)["step"] == 3


def test_a_second_run_on_the_same_out_is_refused(data, tmp_path, capsys):
    from jdnet_plugin.training.trainer import lock_run_dir

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process running in that folder
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["--data", str(data), "--out", str(out), "--steps", "1", *TINY]) == 2
        assert "in use by another training run" in capsys.readouterr().err
        assert not (out / "latest.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    held = lock_run_dir(out)  # this process's own lock (a notebook's earlier Trainer) is refused too
    try:
        assert main(["--data", str(data), "--out", str(out), "--steps", "1", *TINY]) == 2
    finally:
        held.close()
    assert main(["--data", str(data), "--out", str(out), "--steps", "1", *TINY]) == 0
    assert main(["--data", str(data), "--out", str(out), "--steps", "1", *TINY]) == 0  # released after each run


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the workers")
def test_restart_right_after_sigkill_resumes_while_workers_linger(data, tmp_path, capsys):
    from jdnet_plugin.training.trainer import lock_run_dir

    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--steps", "400", "--save-every", "2", *TINY, "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "jdnet_plugin.train", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(out / "latest.pt", proc)
    workers = _children(proc.pid)
    assert workers, "no DataLoader workers: nothing was tested"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        lock = lock_run_dir(out)  # at once: the killed run's workers still share its open lock file
        assert any(Path(f"/proc/{w}").exists() for w in workers), "the workers had already gone: nothing was tested"
        lock.close()
        step = torch.load(out / "latest.pt", weights_only=True)["step"]
        assert main([*args[:-2], "--workers", "0"]) == 0
        assert f"resumed from {step} ({out / 'latest.pt'})" in capsys.readouterr().err
        assert torch.load(out / "final.pt", weights_only=True)["step"] == 400
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


@pytest.mark.parametrize("argv, message", [
    ([], "no training data"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--set", "bogus=1"], "unknown setting(s) in command-line overrides: bogus"),
    (["--model", "channels=3"], "channels must be even"),
    (["--patch-size", "64"], "crop 64x64 is bigger than the image (24x28)"),
    (["--clean-fraction", "0.2"], "clean_fraction needs synthetic_rain"),
    (["--render-scale", "1", "2"], "render_scale needs synthetic_rain"),
    (["--synthetic-rain", "light", "--render-scale", "0.5"], "render_scale must be a number >= 1"),
])
def test_cli_errors_are_one_line(data, tmp_path, capsys, argv, message):
    full = [*([] if not argv else ["--data", str(data)]), "--out", str(tmp_path / "o"), *TINY, *argv]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_config_file_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: jdnet-lite\nmodel: {units: 2}\nbatch_size: 8\nloss: l1\n")
    assert main(["--config", str(cfg), "--batch-size", "4", "--scales", "1", "--print-config"]) == 0
    got = yaml.safe_load(capsys.readouterr().out)
    assert got["preset"] == "jdnet-lite" and got["model"] == {"units": 2, "scales": 1}
    assert got["batch_size"] == 4 and got["loss"] == "l1"
    assert got["lr"] == 5e-4 and got["patch_size"] == 64 and got["milestones"] == [0.6, 0.8]  # the defaults
    (tmp_path / "bad.yaml").write_text("batch: 3\n")
    assert main(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown setting(s)" in capsys.readouterr().err


def test_ddp_on_cpu_with_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "jdnet_plugin.train", "--data", str(data), "--out", str(out), "--steps", "4", "--save-every", "2",
           "--log-every", "1", "--device", "cpu", *TINY]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "final.pt", "latest.pt", "log.jsonl"]
    records = _log(out)
    assert records[0]["event"] == "start" and records[0]["world_size"] == 2
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4]  # one writer, rank 0
    ckpt = torch.load(out / "final.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["world_size"] == 2 and ckpt["sampler_position"] == 4 * 2 * 2
    x = torch.rand(2, 3, 16, 20)
    assert load_model(out / "final.pt")(x).shape == x.shape


def test_init_fine_tunes_from_given_weights_and_refuses_another_architecture(data, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["--data", str(data), "--out", str(first), "--steps", "2", *TINY]) == 0
    start = dict(load_model(first / "final.pt").named_parameters())  # BatchNorm statistics move at any lr
    out = tmp_path / "tuned"
    assert main(["--data", str(data), "--out", str(out), "--steps", "1", "--lr", "1e-12",
                 "--init", str(first / "final.pt"), *TINY]) == 0
    tuned = dict(load_model(out / "final.pt").named_parameters())
    # lr 1e-12: one Adam step moves each weight by about 1e-12, so the run started from the init weights
    assert all(torch.allclose(tuned[k].float(), v.float(), atol=1e-6) for k, v in start.items())
    fresh = dict(load_model(_fresh_run(data, tmp_path)).named_parameters())
    assert not all(torch.allclose(fresh[k].float(), v.float(), atol=1e-3) for k, v in start.items())

    # a resume loads latest.pt, so it does not need the init weights any more
    (first / "final.pt").rename(first / "moved.pt")
    assert main(["--data", str(data), "--out", str(out), "--steps", "1", "--lr", "1e-12",
                 "--init", str(first / "final.pt"), *TINY]) == 0
    assert "resumed from 1" in capsys.readouterr().err
    (first / "moved.pt").rename(first / "final.pt")
    assert main(["--data", str(data), "--out", str(tmp_path / "other"), "--steps", "1",
                 "--init", str(first / "final.pt"), *TINY, "--scales", "2", "--channels", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "init weights" in err and "'scales': 1" in err and "'scales': 2" in err
    # refused before any growth: the file's own settings, not a widened copy's
    assert "widened to" not in err and "'channels': 16" in err and "'channels': 20" in err
    # more units than the init weights: they are deepened (archs.grow.deepen), fewer: refused
    assert main(["--data", str(data), "--out", str(tmp_path / "deeper"), "--steps", "1", "--lr", "1e-12",
                 "--init", str(first / "final.pt"), *TINY, "--units", "2"]) == 0
    assert "deepened to 2" in capsys.readouterr().err
    assert load_model(tmp_path / "deeper" / "final.pt").config.units == 2
    # more channels: widened (archs.grow.widen), then trained from the same image
    assert main(["--data", str(data), "--out", str(tmp_path / "wider"), "--steps", "1", "--lr", "1e-12",
                 "--init", str(first / "final.pt"), *TINY, "--channels", "20"]) == 0
    assert "widened to 20" in capsys.readouterr().err
    wider = load_model(tmp_path / "wider" / "final.pt")
    assert wider.config.channels == 20
    exit_w, init_w = wider.exitBlock[0].weight, load_model(first / "final.pt").exitBlock[0].weight
    assert torch.allclose(exit_w[:, :16], init_w, atol=1e-6) and exit_w[:, 16:].abs().max() < 1e-6
    assert main(["--data", str(data), "--out", str(tmp_path / "too-wide"), "--steps", "1",
                 "--init", str(first / "final.pt"), *TINY, "--channels", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: init weights") and "weight maps" in err
    assert main(["--data", str(data), "--out", str(tmp_path / "shallower"), "--steps", "1",
                 "--init", str(tmp_path / "deeper" / "final.pt"), *TINY]) == 2
    assert "'units': 2" in capsys.readouterr().err
    assert main(["--data", str(data), "--out", str(tmp_path / "o2"), "--steps", "1",
                 "--init", str(tmp_path / "missing.pt"), *TINY]) == 2
    assert "missing.pt" in capsys.readouterr().err


def _fresh_run(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "fresh"
    assert main(["--data", str(data), "--out", str(out), "--steps", "1", "--lr", "1e-12", "--seed", "7",
                 *TINY]) == 0
    return out / "final.pt"


def test_runs_saved_before_a_setting_existed_still_resume():
    from jdnet_plugin.training import config_differences, default_config

    now = default_config()
    old = {k: v for k, v in now.items() if k not in ("clean_fraction", "init")}
    assert config_differences(old, now) == []
    assert config_differences(old, {**now, "clean_fraction": 0.2}) == [
        "clean_fraction: 0.0 (saved) vs 0.2 (now)"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_process_group_with_workers_saves_and_exits_cleanly(data, tmp_path, sig, code):
    # Ctrl-C and job schedulers signal every process of the group, DataLoader workers included.
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jdnet_plugin.train", "--data", str(data), "--out", str(out), "--steps", "100000",
           "--save-every", "3", *TINY, "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _wait_for(out / "latest.pt", proc)
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    assert _log(out)[-1]["event"] == f"stopped by {sig.name}"
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == _log(out)[-1]["step"]


def test_config_choices_come_from_the_registries():
    """Every loss build_loss knows (aliases too) and every rain preset is a valid setting; the CLI offers them."""
    from jdnet_plugin.cli.train import build_parser
    from jdnet_plugin.losses import LOSS_NAMES, build_loss
    from jdnet_plugin.rain import list_rain_presets
    from jdnet_plugin.training.config import ConfigError, load_config

    for loss in LOSS_NAMES:
        assert load_config(overrides={"loss": loss}).loss == loss
        build_loss(loss)
    for rain in list_rain_presets():
        assert load_config(overrides={"synthetic_rain": rain}).synthetic_rain == rain
    with pytest.raises(ConfigError, match="loss: unknown loss 'perceptual'"):
        load_config(overrides={"loss": "perceptual"})
    assert load_config(overrides={"loss": "ssim+0.5*l1"}).loss == "ssim+0.5*l1"  # a weighted sum
    with pytest.raises(ConfigError, match="loss: .*positive"):
        load_config(overrides={"loss": "ssim+0*l1"})
    args = build_parser().parse_args(["--loss", "l2", "--synthetic-rain", "storm"])
    assert args.loss == "l2" and args.synthetic_rain == "storm"


def test_train_config_is_typed_built_once_and_matches_the_defaults_file(data, tmp_path):
    import dataclasses

    from jdnet_plugin.training import ConfigError, TrainConfig, default_config

    assert [f.name for f in dataclasses.fields(TrainConfig)] == list(default_config())  # one field per YAML key
    assert TrainConfig().to_dict() == default_config()
    cfg = TrainConfig(preset="jdnet-lite", data=str(data), out=str(tmp_path / "o"), steps=2, model={"units": 1})
    assert cfg.data == [str(data)] and cfg.lr == default_config()["lr"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    for bad, message in [({"batch_size": "8"}, "batch_size must be an integer"), ({"hflip": "yes"}, "hflip must be"),
                         ({"gamma": 0}, "gamma must be a number"), ({"seed": 1.5}, "seed must be an integer"),
                         ({"preset": "jdnet-huge"}, "unknown preset")]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"batch": 3})
    # the trainer resolves paths and the step count on its own copy; the caller's config is left as it was
    trainer = Trainer(cfg.replace(steps=None, data=[os.path.relpath(data)], val=os.path.relpath(data),
                                  batch_size=2, patch_size=16, workers=0, tensorboard=False, progress=False))
    trainer.setup()
    assert trainer.cfg.steps >= 1 and trainer.cfg.data == [str(data.resolve())]
    assert trainer.cfg.val == str(data.resolve()) and cfg.steps == 2


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_training_config_is_valid(path):
    # The recipes of the shipped weights and of the experiments: each must load and validate as it is.
    from jdnet_plugin import list_models
    cfg = load_config(path)
    assert cfg.steps is None or cfg.steps > 0
    assert cfg.preset in list_models()


def test_ema_checkpoints_hold_the_moving_average_and_resume_exactly(data, tmp_path, capsys):
    args = ["--data", str(data), "--val", str(data), "--steps", "6", "--snapshot-every", "1", "--val-every", "3",
            "--seed", "3", *TINY]
    assert main(["--out", str(tmp_path / "plain"), *args]) == 0
    assert main(["--out", str(tmp_path / "ema"), "--ema-decay", "0.8", *args]) == 0
    # the trained weights are those of the run without the average; the model is their moving average,
    # BatchNorm statistics included, starting from the weights after the first step
    snaps = [torch.load(tmp_path / "plain" / f"step_{i}.pt", weights_only=True)["model"] for i in range(1, 7)]
    final = torch.load(tmp_path / "ema" / "final.pt", weights_only=True)
    assert final["ema_updates"] == 6 and final["train_config"]["ema_decay"] == 0.8
    expected = {k: v.double() for k, v in snaps[0].items() if v.is_floating_point()}
    for s in snaps[1:]:
        expected = {k: 0.8 * v + 0.2 * s[k].double() for k, v in expected.items()}
    for k, v in expected.items():
        assert torch.allclose(final["train_model"][k].double(), snaps[-1][k].double(), atol=1e-6), k
        assert torch.allclose(final["model"][k].double(), v, atol=1e-5), k
    assert not all(torch.allclose(final["model"][k].double(), snaps[-1][k].double(), atol=1e-4) for k in expected)
    # load_model and validation see the average
    averaged = load_model(tmp_path / "ema" / "final.pt").state_dict()
    assert all(torch.equal(averaged[k], final["model"][k]) for k in expected)
    val = {r["step"]: r["val_psnr"] for r in _log(tmp_path / "ema") if "val_psnr" in r}
    plain_val = {r["step"]: r["val_psnr"] for r in _log(tmp_path / "plain") if "val_psnr" in r}
    assert val.keys() == plain_val.keys() == {3, 6} and val[6] != plain_val[6]

    # a run stopped at step 3 resumes the average too: the same final weights
    out = tmp_path / "ema"
    (out / "final.pt").unlink()
    (out / "latest.pt").unlink()
    (out / "step_3.pt").rename(out / "latest.pt")
    assert main(["--out", str(out), "--ema-decay", "0.8", *args]) == 0
    again = torch.load(out / "final.pt", weights_only=True)
    for k in expected:
        assert torch.allclose(again["model"][k], final["model"][k], atol=1e-6), k
        assert torch.allclose(again["train_model"][k], final["train_model"][k], atol=1e-6), k
    # a run saved without the average does not resume with one
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "plain"), "--ema-decay", "0.8", *args]) == 2
    assert "ema_decay: 0.0 (saved) vs 0.8 (now)" in capsys.readouterr().err
