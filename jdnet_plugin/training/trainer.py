"""The training loop: data, model, optimiser, checkpoints with automatic resume, validation and logging.

Files in ``out/``: ``config.yaml`` (the resolved settings), ``latest.pt`` (every ``save_every`` steps, on
SIGINT/SIGTERM and at the end), ``step_<N>.pt`` snapshots, ``best.pt`` (best validation PSNR-Y),
``final.pt``, ``log.jsonl`` (one JSON record per log step / validation / event) and ``tb/`` (TensorBoard).
Every checkpoint is a :func:`jdnet_plugin.save_checkpoint` file (``load_model`` reads it without flags)
that also holds what resuming needs: optimiser, scheduler, grad scaler, step, data stream position and
the RNG states, all loadable with ``torch.load(weights_only=True)``. With ``ema_decay`` its model is the
moving average of the weights, and ``train_model`` holds the weights being trained.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset

from ..archs.grow import deepen, widen, widened_config
from ..checkpoint import cpu_state_dict, load_model, load_state_dict_checked, read_checkpoint, save_checkpoint
from ..data import PairedAugment, collate, make_dataset
from ..losses import build_loss
from ..registry import create_model
from ..utils.atomic import atomic_copy, atomic_write_text
from ..utils.machine import describe_machine
from .config import ConfigError, TrainConfig, config_differences
from .distributed import all_reduce, cleanup_distributed, init_distributed, resolve_device
from .sampler import InfiniteSampler

__all__ = ["Trainer", "TrainResult", "rng_state", "set_rng_state", "CHECKPOINT_NAMES"]

CHECKPOINT_NAMES = ("latest.pt", "best.pt", "final.pt")
_SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy RNG states as tensors and plain lists (``weights_only``-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _record_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):  # a line cut short by a kill
        return float("inf")


class TrainResult(dict):
    """``step``, ``steps``, ``status`` ("done" | "SIGINT" | "SIGTERM"), ``out``, ``best_psnr``, ``exit_code``."""


class _Log:
    """``log.jsonl`` and TensorBoard on the main process; nothing elsewhere."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, start_step: int) -> None:
        self.enabled, self.path, self.tb = enabled, out / "log.jsonl", None
        if not enabled:
            return
        if self.path.exists():  # records after the checkpoint we resume from are replayed: drop them
            keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if _record_step(line) <= start_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        self._file.flush()
        if self.tb is not None and "step" in record and "event" not in record:
            for k, v in record.items():
                if k not in ("step", "event") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k, v,
                                       record["step"])

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, img.clamp(0, 1), step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers leave the trainer's process group: Ctrl-C and schedulers signal the whole group, and
    a worker killed by it would crash the trainer before it saves. The trainer stops its workers itself (and
    they exit when it dies), so their own signal handling stays as PyTorch sets it."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


_LOCKED: set[Path] = set()  # run folders locked by this process (a POSIX lock does not exclude its owner)


class _RunLock:
    """An open, locked ``.lock`` file; ``close()`` (or the end of the process) releases it."""

    def __init__(self, f, key: Path) -> None:
        self._f, self._key = f, key

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            _LOCKED.discard(self._key)

    def __del__(self) -> None:
        self.close()


def lock_run_dir(out: Path) -> _RunLock:
    """An exclusive lock on ``out/.lock``, held until the returned lock is closed: two runs writing into one
    folder would corrupt each other's resume. A POSIX record lock (``lockf``) belongs to this process alone:
    the OS drops it when the process ends (SIGKILL included) even while DataLoader workers forked from it,
    which share the open file, are still shutting down, so a restart right after a kill resumes. Within one
    process a set of locked folders does what the OS lock cannot."""
    import fcntl

    key = Path(out).resolve()
    busy = ConfigError(f"{out} is in use by another training run (it holds {out / '.lock'}); "
                       "wait for it to finish or choose another --out")
    if key in _LOCKED:
        raise busy
    f = open(out / ".lock", "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:  # EAGAIN or EACCES: held by another process
        f.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise busy from None
    _LOCKED.add(key)
    return _RunLock(f, key)


class Trainer:
    """Train a JDNet from a resolved configuration (see ``configs/train_default.yaml``).

    >>> Trainer(load_config(overrides={"data": ["train/"], "out": "runs/x"})).fit()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | Mapping[str, Any], fresh: bool = False) -> None:
        self.cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.fresh = fresh
        self.out = Path(self.cfg.out)
        self._stop: str | None = None
        self._ready = False

    # ---- setup -----------------------------------------------------------------------------------------
    def _build_data(self) -> None:
        if not self.cfg.data:
            raise ConfigError("no training data: pass --data DIR (or data: [...] in the config file)")
        self.cfg = cfg = self.cfg.replace(data=[str(Path(p).resolve()) for p in self.cfg.data],
                                          val=str(Path(self.cfg.val).resolve()) if self.cfg.val else None)
        augment = PairedAugment(cfg.hflip, cfg.vflip, cfg.rot90)
        self.train_set = make_dataset(cfg.data, format=cfg.format, patch_size=cfg.patch_size,
                                      synthetic_rain=cfg.synthetic_rain, seed=cfg.seed, augment=augment,
                                      cache=cfg.cache, pair_dirs=cfg.pair_dirs, require_pairs=True,
                                      clean_fraction=cfg.clean_fraction, render_scale=cfg.render_scale)
        if cfg.steps is None:  # the authors': 1000 epochs of their batches
            self.cfg = cfg = cfg.replace(steps=max(1, math.ceil(1000 * len(self.train_set) / cfg.batch_size)))
        self.val_set = None
        if cfg.val:
            pair_dirs = cfg.pair_dirs
            if pair_dirs and not (Path(cfg.val) / pair_dirs[0]).is_dir():  # val in a usual layout
                pair_dirs = None
            val = make_dataset(cfg.val, pair_dirs=pair_dirs, require_pairs=True)
            if cfg.val_max:
                val = Subset(val, range(min(cfg.val_max, len(val))))
            self.val_set = val

    def _loader(self, start: int) -> DataLoader:
        cfg, d = self.cfg, self.dist
        sampler = InfiniteSampler(len(self.train_set), cfg.seed, rank=d.rank, world_size=d.world_size,
                                  start=start)
        return DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                          worker_init_fn=_leave_stop_signals_to_the_trainer,
                          pin_memory=self.device.type == "cuda")

    def _build_model(self) -> None:
        cfg = self.cfg
        try:
            self.model = create_model(cfg.preset, **cfg.model)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid model settings {cfg.model} for preset {cfg.preset!r}: {e}") from e
        if cfg.init and self._resume_path() is None:  # a resume loads its own weights
            self._load_init(cfg.init)
        self.model.set_attention_impl(cfg.attention)
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.ema = None
        if cfg.ema_decay:  # BatchNorm's statistics are averaged too (use_buffers)
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            self.ema.module.eval()
        amp = cfg.amp
        if amp == "auto":
            amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        milestones = sorted({max(1, round(m * cfg.steps)) for m in cfg.milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=cfg.gamma)
        self.loss_fn = build_loss(cfg.loss)

    def _load_init(self, source: str) -> None:
        """Start from the weights ``source`` (a fine-tune); a later resume overwrites them."""
        init = load_model(source)
        have, want = init.config, self.model.config
        growable = (have.channels <= want.channels and have.units <= want.units
                    and replace(widened_config(have, want.channels), units=want.units) == want)
        if have != want and not growable:
            raise ConfigError(f"init weights {source!r} are a model with {have.to_dict()}, but this run builds "
                              f"{want.to_dict()} (preset {self.cfg.preset!r}); set --preset and the model settings to "
                              "match the weights (a run may have more units or channels than its init: it is deepened "
                              "or widened)")
        if have.channels < want.channels:
            try:
                init = widen(init, want.channels)
            except ValueError as e:
                raise ConfigError(f"init weights {source!r}: {e}") from None
            print(f"init weights {source} have {have.channels} channels; widened to {want.channels} computing the "
                  "same image (archs.grow.widen)", file=sys.stderr)
        if have.units < want.units:
            init = deepen(init, want.units)
            print(f"init weights {source} have {have.units} units; deepened to {want.units} computing the "
                  "same image (archs.grow.deepen)", file=sys.stderr)
        self.model.load_state_dict(init.state_dict())

    def _resume_path(self) -> Path | None:
        """``out/latest.pt`` when this run resumes from it (it exists and the run is not ``fresh``)."""
        path = self.out / "latest.pt"
        return None if self.fresh or not path.exists() else path

    def _resume(self) -> int:
        """Load ``out/latest.pt`` when there is one (and not ``fresh``); the step to start from."""
        path = self._resume_path()
        if path is None:
            return 0
        ckpt = read_checkpoint(path)
        if "train_config" not in ckpt or "optimizer" not in ckpt:
            raise ConfigError(f"{path} is not a training checkpoint of this trainer; use --fresh to start over")
        diffs = config_differences(ckpt["train_config"], self.cfg)
        if diffs:
            raise ConfigError(f"{self.out} holds a run with other settings ({'; '.join(diffs)}); "
                              "use the same settings to resume, --fresh to start over, or another --out")
        if self.ema is not None:  # the settings agree (above), so the file holds both
            load_state_dict_checked(self.model, ckpt["train_model"], str(path))
            load_state_dict_checked(self.ema.module, ckpt["model"], f"{path} (moving average)")
            self.ema.n_averaged.fill_(int(ckpt["ema_updates"]))
        else:
            load_state_dict_checked(self.model, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when saved without fp16
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.best_psnr = ckpt.get("best_psnr", float("-inf"))
        self.sampler_position = int(ckpt["sampler_position"])
        return int(ckpt["step"])

    def _clear_outputs(self) -> None:
        for p in [*(self.out / n for n in CHECKPOINT_NAMES), *self.out.glob("step_*.pt"), self.out / "log.jsonl"]:
            p.unlink(missing_ok=True)
        if (self.out / "tb").is_dir():
            for p in (self.out / "tb").iterdir():
                p.unlink(missing_ok=True)

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _save(self, names: list[str], step: int) -> None:
        if not self.dist.is_main or not names:
            return
        extra = dict(train_config=self.cfg.to_dict(), step=step, optimizer=self.optimizer.state_dict(),
                     scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(),
                     sampler_position=self.sampler_position
                     + (step - self.start_step) * self.cfg.batch_size * self.dist.world_size,
                     world_size=self.dist.world_size, best_psnr=self.best_psnr)
        if self.ema is not None:
            extra.update(train_model=cpu_state_dict(self.model),
                         ema_updates=int(self.ema.n_averaged))
        first = self.out / names[0]
        save_checkpoint(first, self.inference_model, **extra)
        for name in names[1:]:  # identical content: copy the file atomically rather than serialise again
            atomic_copy(first, self.out / name)

    # ---- validation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean PSNR-Y and SSIM-Y of :attr:`inference_model` over the validation images (the published
        convention)."""
        from ..metrics import psnr, ssim

        model = self.inference_model
        model.eval()
        ps, ss, sample = [], [], None
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            rain, clean = item["rain"][None].to(self.device), item["clean"][None].to(self.device)
            if self.channels_last:
                rain = rain.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                pred = model(rain)
            pred = pred.float().clamp(0, 1)
            ps.append(float(psnr(pred, clean, convention="y")[0]))
            ss.append(float(ssim(pred, clean, convention="y")[0]))
            if i == 0:
                sample = torch.cat([rain[0].float(), pred[0], clean[0]], dim=-1).cpu()
        self.model.train()
        return {"val_psnr": float(np.mean(ps)), "val_ssim": float(np.mean(ss)), "sample": sample}

    @property
    def inference_model(self) -> nn.Module:
        """What validation measures and checkpoints hold as their model: the moving average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---- signals ---------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop = signal.Signals(signum).name

    def _should_stop(self, step: int) -> bool:
        flag = 1.0 if self._stop else 0.0
        # Every rank must stop at the same step: agree on it every log_every steps (a sync point anyway).
        if self.dist.enabled and step % self.cfg.log_every == 0:
            flag = float(all_reduce(torch.tensor([flag], device=self.device), op=dist.ReduceOp.MAX).item())
            if flag and not self._stop:
                self._stop = "SIGTERM"
        elif self.dist.enabled:
            return False
        return flag > 0

    # ---- the loop --------------------------------------------------------------------------------------
    def setup(self) -> int:
        """Devices, process group, data, model, optimiser; resume from ``out/latest.pt``. The start step."""
        cfg = self.cfg
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = d = init_distributed(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._build_data()
        self._build_model()
        self.best_psnr, self.sampler_position = float("-inf"), 0
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = lock_run_dir(self.out)
        if self.fresh and d.is_main:
            self._clear_outputs()
        self.start_step = self._resume()
        if self.start_step and d.is_main:
            print(f"resumed from {self.start_step} ({self.out / 'latest.pt'})", file=sys.stderr)
        if d.is_main:  # out/ was made above, with the lock
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self._ready = True
        return self.start_step

    def fit(self) -> TrainResult:
        """Train until ``steps`` (resuming from ``out/latest.pt``) or until SIGINT/SIGTERM."""
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in handlers:
                signal.signal(s, self._on_signal)
            if not self._ready:
                self.setup()
            return self._fit()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            cleanup_distributed()
            if getattr(self, "_lock", None) is not None:  # the run is over: the folder is free again
                self._lock.close()
                self._lock, self._ready = None, False

    def _fit(self) -> TrainResult:
        cfg, d, start = self.cfg, self.dist, self.start_step
        log = _Log(self.out, d.is_main, cfg.tensorboard, start)
        steps = cfg.steps
        model: nn.Module = self.model
        if d.enabled:
            model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        log.write({"event": "resume" if start else "start", "step": start, "steps": steps,
                   "world_size": d.world_size, "device": str(self.device), "train_size": len(self.train_set),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   "machine": describe_machine(self.device)})
        bar = None
        if d.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        status, step = "done", start
        try:
            if start < steps:
                status, step = self._loop(model, start, steps, log, bar)
            if status == "done":
                self._save(["final.pt", "latest.pt"], step)
            log.write({"event": "done" if status == "done" else f"stopped by {status}", "step": step})
        finally:
            if bar is not None:
                bar.close()
            log.close()
        if status != "done" and d.is_main:
            print(f"stopped by {status} at step {step}; {self.out / 'latest.pt'} saved: run the same command "
                  "again to resume", file=sys.stderr)
        return TrainResult(step=step, steps=steps, status=status, out=str(self.out), best_psnr=self.best_psnr,
                           exit_code=_SIGNAL_EXIT.get(status, 0))

    def _loop(self, model: nn.Module, start: int, steps: int, log: _Log, bar) -> tuple[str, int]:
        cfg, d = self.cfg, self.dist
        batches = iter(self._loader(self.sampler_position))
        model.train()
        t0, n0, loss_sum, loss_n = time.perf_counter(), start, torch.zeros((), device=self.device), 0
        step = start
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        while step < steps:
            batch = next(batches)
            rain = batch["rain"].to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            clean = batch["clean"].to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
            with self._autocast():
                pred = model(rain)
            loss = self.loss_fn(pred.float(), clean)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            step += 1
            loss_sum += loss.detach()
            loss_n += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0 or step == steps:
                if d.enabled:
                    all_reduce(loss_sum)
                    loss_sum /= d.world_size
                if not torch.isfinite(loss_sum):
                    raise FloatingPointError(f"the training loss became {float(loss_sum)} by step {step}; "
                                             "lower --lr, try --amp none, or check the data")
                now = time.perf_counter()
                rec = {"step": step, "train_loss": float(loss_sum) / loss_n,
                       "lr": self.scheduler.get_last_lr()[0], "steps_per_s": (step - n0) / max(now - t0, 1e-9)}
                t0, n0, loss_n = now, step, 0
                loss_sum.zero_()
                log.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['train_loss']:.4f}", lr=f"{rec['lr']:.1e}",
                                    sps=f"{rec['steps_per_s']:.2f}")
            names = []
            if self.val_set is None and step % cfg.val_every == 0 and d.is_main:
                log.image("train/rainy|derained|clean",
                          torch.cat([rain[0], pred[0].detach(), clean[0]], dim=-1).float().cpu(), step)
            if self.val_set is not None and (step % cfg.val_every == 0 or step == steps) and d.is_main:
                tv = time.perf_counter()
                v = self.validate()
                t0 += time.perf_counter() - tv  # steps/s counts training only
                sample = v.pop("sample")
                log.write({"step": step, **v})
                log.image("val/rainy|derained|clean", sample, step)
                if v["val_psnr"] > self.best_psnr:
                    self.best_psnr = v["val_psnr"]
                    names.append("best.pt")
            if step % cfg.save_every == 0 and step < steps:
                names.append("latest.pt")
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                names.append(f"step_{step}.pt")
            stop = self._should_stop(step)
            if stop and "latest.pt" not in names:
                names.append("latest.pt")
            if names and loss_n and not torch.isfinite(loss_sum):  # never save diverged weights
                raise FloatingPointError(f"the training loss became {float(loss_sum)} by step {step}; "
                                         "lower --lr, try --amp none, or check the data")
            self._save(names, step)
            if stop:
                return self._stop or "SIGTERM", step
        return "done", step
