"""Training JDNet: configuration, the resumable sampler, DDP setup and the trainer."""
from .config import (DEFAULT_CONFIG, ConfigError, TrainConfig, config_differences, default_config, load_config,
                     merge_config)
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .sampler import InfiniteSampler
from .trainer import CHECKPOINT_NAMES, Trainer, TrainResult, rng_state, set_rng_state

__all__ = ["DEFAULT_CONFIG", "ConfigError", "TrainConfig", "config_differences", "default_config", "load_config",
           "merge_config", "DistInfo", "cleanup_distributed", "init_distributed", "resolve_device", "InfiniteSampler",
           "CHECKPOINT_NAMES", "Trainer", "TrainResult", "rng_state", "set_rng_state"]
