"""jdnet-plugin: single-image deraining with JDNet (Wang et al., ACM MM 2020) as a preprocessing plugin."""
from .archs import JDNet, JDNetConfig
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .ensemble import FlipEnsemble
from .inference import derain
from .registry import (DEFAULT_WEIGHTS, create_model, list_models, list_weights, register_model,
                       register_weights)

__version__ = "0.1.0"

__all__ = ["JDNet", "JDNetConfig", "CheckpointError", "create_model", "load_model", "save_checkpoint",
           "list_models", "list_weights", "register_model", "register_weights", "DEFAULT_WEIGHTS",
           "derain", "FlipEnsemble", "__version__"]
