"""One registry of named JDNet presets and of named pretrained weights (timm's ``create_model`` style)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .archs import JDNet, JDNetConfig
from .errors import CheckpointError, UnknownNameError

__all__ = ["register_model", "list_models", "model_config", "create_model",
           "PretrainedWeights", "register_weights", "list_weights", "get_weights", "resolve_weights",
           "DEFAULT_WEIGHTS", "WEIGHTS_DIR", "sha256_file"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = "default"

_MODELS: dict[str, dict] = {}


def register_model(name: str, **config) -> None:
    """Register a preset: a name for a set of :class:`JDNetConfig` parameters."""
    JDNetConfig(**config)  # fail at registration, not at first use
    _MODELS[name] = dict(config)


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_config(name: str, **overrides) -> JDNetConfig:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return JDNetConfig(**{**_MODELS[name], **overrides})


def create_model(name: str = "jdnet", pretrained: bool = False, **overrides) -> JDNet:
    """A JDNet of a registered preset, ``name`` = ``"preset"`` or ``"preset.tag"`` (timm's convention), any
    parameter overridden. ``pretrained=True`` loads the shipped weights ``preset.tag`` (for a bare preset, its
    default tag; see :func:`list_weights`) in eval mode; without it the weights are random.

    >>> create_model("jdnet-lite", units=2).config.units
    2
    """
    preset, _, tag = name.partition(".")
    if not pretrained:
        return JDNet(model_config(preset, **overrides))
    spec = get_weights(name if tag else _PRETRAINED_DEFAULT.get(preset, name))
    if spec.model != preset:
        raise UnknownNameError(f"weights {spec.name!r} are for {spec.model!r}, not {preset!r}")
    from .checkpoint import load_model  # checkpoint imports this module

    model = load_model(spec.name)
    if overrides and model.config != model_config(preset, **overrides):
        raise ValueError(f"pretrained {spec.name!r} has the preset's architecture; overrides {overrides} change it")
    return model


# The paper's setting and the authors' two ablations.
register_model("jdnet")
register_model("jdnet-no-sa", self_attention=False)
register_model("jdnet-no-sa-sc", self_attention=False, self_calibration=False)
# Small enough to train on a 2-core CPU in about an hour.
register_model("jdnet-lite", channels=16, units=6, scales=3)
# Twice as deep: grown from jdnet-lite weights (archs.grow.deepen), issue 16 stage 5.
register_model("jdnet-lite-deep", channels=16, units=12, scales=3)


@dataclass(frozen=True)
class PretrainedWeights:
    """A weights file shipped in the package, with its checksum and what it was measured to do."""

    name: str
    file: str
    sha256: str
    model: str
    description: str = ""
    metrics: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


_WEIGHTS: dict[str, PretrainedWeights] = {}


_PRETRAINED_DEFAULT: dict[str, str] = {}  # preset -> the weights create_model(preset, pretrained=True) loads


def register_weights(weights: PretrainedWeights, preset_default: bool = False) -> None:
    """Register shipped weights under ``weights.name`` (``"preset.tag"``) and its aliases;
    ``preset_default``: what ``create_model(weights.model, pretrained=True)`` loads."""
    for key in (weights.name, *weights.aliases):
        _WEIGHTS[key] = weights
    if preset_default:
        _PRETRAINED_DEFAULT[weights.model] = weights.name


def list_weights() -> list[str]:
    return sorted(_WEIGHTS)


def get_weights(name: str) -> PretrainedWeights:
    if name not in _WEIGHTS:
        known = ", ".join(list_weights()) or "none are registered yet"
        raise UnknownNameError(f"unknown weights {name!r}; registered weights: {known}")
    return _WEIGHTS[name]


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(name: str) -> Path:
    """The local file of registered weights, after checking it exists and its checksum matches."""
    spec = get_weights(name)
    path = spec.path
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {name!r} should be shipped at {path}, but the file is missing; "
            "reinstall jdnet-plugin or pass a checkpoint path"
        )
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise CheckpointError(
            f"weights file {path} is corrupt or was changed: sha256 {digest}, expected {spec.sha256}"
        )
    return path


def _shipped(name: str, sha256: str, description: str, aliases: tuple[str, ...] = (),
             preset_default: bool = False) -> None:
    """Register the shipped file ``weights/PRESET-TAG.pt`` as the weights ``name`` = ``"PRESET.TAG"``."""
    preset, _, tag = name.partition(".")
    register_weights(PretrainedWeights(name, f"{preset}-{tag}.pt", sha256, preset, description, aliases=aliases),
                     preset_default)


# Shipped weights; their model cards are in the README. The previous default: configs/train_default_weights.sh.
_shipped(
    name="jdnet-lite.synthrain",
    sha256="365fcfdf9c0d616ed66b4f2f9cd3a7b8227b89f8b6657a8887b10c98528b3b7c",
    description="jdnet-lite, 1000 + 1200 + 1800 steps (batch 16, 64x64, negative SSIM; each stage fine-tunes the last; "
                "stage 3 leaves 10 % of the crops dry) on 162 "
                "clean photos with the project's mixed light/heavy rain synthesis; never saw Rain100L's rain, but 24 "
                "of those photos were Rain100L test backgrounds",
    aliases=("jdnet-lite-synthrain",),  # its first name; the default until 2026-12-05
)
_shipped(
    name="jdnet-lite.broadrain",
    sha256="4e9b5059bb5b49917559ad649d7efe9715f57933416bd0de67df4bc2f5c6c394",
    description="jdnet-lite, 1500 steps from scratch (batch 12, 96x96) + 1600 fine-tuning steps (batch 8, 128x128), "
                "negative SSIM, 10 % dry crops, on the 548 clean photos of ../shared/data/clean but Kodak24 with "
                "the broad rain (every source of jdnet_plugin.rain); no benchmark image (configs/train_broad_weights.sh)",
)  # the default from 2026-12-05 (first session) to 2026-12-05 (second)
_shipped(
    name="jdnet-lite.broadrain-s3",
    sha256="d4ac7c1a3c65836bfd6ee9c86ba4606173035499a293cdf528352d22fabb2af4",
    description="jdnet-lite.broadrain fine-tuned 1200 more steps (stage 3: batch 8, 128x128, Adam 1.5e-4, negative "
                "SSIM, 10 % dry crops) on the same 548 clean photos with the broad rain; no benchmark image "
                "(configs/train_broad_weights.sh)",
)  # the default from 2026-12-05 (second session) to 2026-12-06
_shipped(
    name="jdnet-lite.broadrain-s4",
    sha256="9f553ba172e979c402c277fee1c32e654bac7102561b983e3a0113156afcb1a6",
    description="jdnet-lite.broadrain-s3 fine-tuned 2000 more steps (stage 4: batch 8, 128x128, Adam 1.5e-4, "
                "negative SSIM, 10 % dry crops, seed 3) on the same 548 clean photos with the broad rain; no "
                "benchmark image (configs/train_broad_weights.sh); not the default: a tie with stage 3 on held-out rain",
)
_shipped(
    name="jdnet-lite.broadrain-s8",
    sha256="0f86d048ebb92013f2418ff5d8a70b2301d69b6c5359b644f436d9a3ae06b5e2",
    description="jdnet-lite.broadrain-s3 fine-tuned 2000 more steps with loss -SSIM + L1 (stage 8: stage 4's recipe, "
                "batch 8, 128x128, Adam 1.5e-4, 10 % dry crops, seed 3) on the same 548 clean photos with the broad "
                "rain; no benchmark image (configs/train_broad_weights.sh)",
)  # the default on 2026-12-06, from the fourth session to the fifth
_shipped(
    name="jdnet-lite.broadrain-s9",
    sha256="cf50b14d3b3fa45dd967990e98c1cb4ad0c66b3d55d56c7fcf73a93bb702e815",
    description="jdnet-lite.broadrain-s8 fine-tuned 2000 more steps with stage 8's recipe (stage 9: loss -SSIM + L1, "
                "batch 8, 128x128, Adam 1.5e-4, 10 % dry crops, seed 9) on the same 548 clean photos with the broad "
                "rain; no benchmark image (configs/train_broad_weights.sh)",
)  # the default on 2026-12-06, from the fifth session to the sixth
_shipped(
    name="jdnet-lite.broadrain-s10",
    sha256="4990506fc083637a406a052d0124bf2860ae786c057a4a507749a55dd38c0bf5",
    description="jdnet-lite.broadrain-s9 fine-tuned 1800 more steps with stage 8's recipe on broad-long rain (stage 10: "
                "broad plus long faint streaks and drops; loss -SSIM + L1, batch 8, 128x128, Adam 1.5e-4, 10 % dry "
                "crops, seed 10) on the same 548 clean photos; no benchmark image (configs/train_broad_weights.sh)",
)  # the default on 2026-12-06, from the sixth session to the eighth
_shipped(
    name="jdnet-lite.broadrain-s12",
    sha256="d74da17fc203bb35e0d993f1c4ad7658918ff31bf2f0ff2785be7ffb85532982",
    description="jdnet-lite.broadrain-s10 fine-tuned 1500 more steps with its recipe on broad-slant rain (stage 12: "
                "broad-long plus dense, thin, slanted long streaks; seed 12); removes more of real photos' dense "
                "slanted streaks than jdnet-lite.broadrain-s10, gives back 0.035 less of CamVid's lost mIoU; not the "
                "default, one of stage 13's two ingredients (configs/train_broad_weights.sh)",
)
_shipped(
    name="jdnet-lite.broadrain-s13",
    sha256="3f2fc8c08208f6e864054c7976ac3c8603605d99a9ccb0cbe143152a6213c166",
    description="the average of the weights of jdnet-lite.broadrain-s10 and jdnet-lite.broadrain-s12 (stage 13: "
                "python -m jdnet_plugin.average; stage 10's figures on held-out benchmark rain, fewer of real photos' "
                "long and slanted streaks left); no benchmark image (configs/train_broad_weights.sh)",
)  # the default from 2026-12-06 (eighth session) to 2026-12-07 (tenth)
_shipped(
    name="jdnet-lite.broadrain-s16st",
    sha256="5e9088be314ccb52b1b68ffe7f9a47bc43be49a74cf1505b1614bff383445de9",
    description="jdnet-lite.broadrain-s10 fine-tuned 1500 more steps with its recipe on broad-slant-torrent rain "
                "(stage 16's ingredient: broad-long plus dense slanted streaks and bright streaks crossing in 3-4 "
                "directions; seed 16); not the default, one of its two ingredients (configs/train_broad_weights.sh)",
)
_shipped(
    name="jdnet-lite.broadrain-s16",
    sha256="963d37894d21f3878eb396487e33edc966e79287f44f654d2269dc5f049bb562",
    description="the average of the weights of jdnet-lite.broadrain-s10 and jdnet-lite.broadrain-s16st (stage 16: "
                "python -m jdnet_plugin.average; against stage 13 more of CamVid's and COCO128's lost score given "
                "back under held-out benchmark rain, the project's heavy rain +0.4 dB); no benchmark image "
                "(configs/train_broad_weights.sh)",
)  # the default on 2026-12-07, from the tenth session to the eleventh
_shipped(
    name="jdnet-lite.broadrain-s17",
    sha256="f0eeaa1441b109caab131e13b5a9535a6236cddaa05580466653cd9c5448101d",
    description="jdnet-lite.broadrain-s16 fine-tuned 1500 more steps with its ingredients' recipe on broad-slant-torrent "
                "rain, keeping a moving average of the weights (stage 17: ema_decay 0.999, seed 18; the average is "
                "shipped); against stage 16 more of CamVid's lost mIoU given back under held-out benchmark rain and "
                "fewer of real photos' long and slanted streaks left; no benchmark image (configs/train_broad_weights.sh)",
)  # the default on 2026-12-07, from the eleventh session to the seventeenth
_shipped(
    name="jdnet-lite.broadrain-s21",
    sha256="5169afb54e1bb5f017f6d7f8d8c5334e8c379f188d92acf0cfd6526a40bdc494",
    description="for faint rain: the average of jdnet-lite.broadrain-s17 (1/2) and two runs of it fine-tuned 1500 more "
                "steps with its recipe on broad-soft rain (1/4 each; stage 21: broad-slant-torrent plus faint, soft "
                "streaks and fine rain; seeds 25, 26); against the default higher PSNR on Rain100L and more of "
                "CamVid's lost mIoU given back under its rain, less cost on clean images, more of real photos' long "
                "streaks left; not the default (configs/train_broad_weights.sh)",
)
_shipped(
    name="jdnet-lite.broadrain-s23",
    sha256="c239f8765bd4b5273549c84840bd779fe5b42fc3e4a809d4b780557ebfe4552f",
    description="the average of jdnet-lite.broadrain-s17 (1/2) and two runs of it fine-tuned 1500 more steps with "
                "its recipe on broad-soft-long-slant rain (1/4 each; stage 23: broad-slant-torrent plus faint soft "
                "streaks, long streaks and fine rain, the slanted and crossing streaks kept at stage 17's shares; "
                "seeds 29, 30); against stage 17 fewer of real photos' long and slanted streaks left, more of "
                "CamVid's lost mIoU given back under held-out benchmark rain, higher PSNR on Rain100L; no benchmark "
                "image (configs/train_broad_weights.sh)",
)  # the default on 2026-12-07, in the seventeenth session, before stage 24
_shipped(
    name="jdnet-lite.broadrain-s24",
    sha256="3536bc1df52968455c5ceb3058fc6df9d4788bcc3cdf7d9485b7cc6317439b24",
    description="the average of jdnet-lite.broadrain-s23 (1/2) and two runs of it fine-tuned 1500 more steps with "
                "its recipe on broad-soft-long-heavy rain (1/4 each; stage 24: stage 23's rain with storms, downpours, "
                "heavy rain and veils back to stage 17's shares; seeds 31, 32); against stage 23 more of CamVid's lost "
                "mIoU given back under held-out benchmark rain, fewer of real photos' streaks left, +0.16 dB on the "
                "project's heavy rain; no benchmark image (configs/train_broad_weights.sh)",
    aliases=(DEFAULT_WEIGHTS,),
    preset_default=True,
)  # the default since 2026-12-07 (seventeenth session)
