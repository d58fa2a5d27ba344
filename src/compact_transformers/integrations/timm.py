"""timm integration: the vision presets as timm models, timm's own scripts, and any timm model as a student.

- Importing this module registers every vision preset in timm's model registry, with a pretrained cfg
  (input size, mean/std, head and first conv, the released weights' URL); a name timm already has is left to
  timm. Then ``timm.create_model("cct_7_3x1_32", num_classes=10)`` and ``timm.list_models("cct_*")`` work, and
  ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` loads our ``.safetensors`` or the authors' ``.pth``.
- ``python -m compact_transformers.integrations.timm train.py --model cct_7_3x1_32 ...`` runs a timm script
  (timm's train.py, validate.py, ...), which only knows registered names, with the presets registered.
- :class:`TimmClassifier`: any timm model with the ``config`` that our training, ``save_model`` /
  ``load_model``, `cct eval` and `cct predict` read: `cct train --model timm:resnet18` trains the paper's CNN
  baselines with our recipe and data.

timm is the ``[timm]`` extra. Without it this module still imports (and registers nothing); what needs timm
raises a ConfigError naming the extra.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import runpy
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, UserError
from ..models import CompactTransformer, build_model, get_preset, list_models
from ..models.config import to_pair
from ..models.stats import DATASET_STATS
from ..models.weights import adapt_state_dict

INSTALL_HINT = "pip install 'compact-transformers[timm]'"
FIRST_CONV = "tokenizer.conv_layers.0.0"  # every family's first convolution (CCT tokenizer or patch embedding)
CLASSIFIER = "classifier.fc"

# timm's register_model appends the name of each preset it registers
__all__ = ["TimmClassifier", "TimmConfig", "checkpoint_filter_fn", "config_from_dict", "main", "pretrained_cfg",
           "register_models"]  # fmt: skip

# Read by timm's register_model: a registered name's pretrained cfgs live in `default_cfgs` of the module that
# defines its entrypoint (filled by register_models, whose entrypoints are module attributes as in timm).
default_cfgs: dict = {}


def _import_timm() -> ModuleType:
    """timm, or a ConfigError naming the extra that installs it."""
    try:
        import timm
    except (ImportError, OSError, RuntimeError) as error:  # also a torchvision built for another torch
        raise ConfigError(f"timm cannot be imported ({error}): {INSTALL_HINT}") from None
    return timm


# ------------------------------------------------------------------------------------ presets in timm


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained cfg of the vision preset ``name``: its input, normalisation, head, weights."""
    preset = get_preset(name)
    config = preset.build_config()
    if preset.weights_url is None:
        description = "no released weights"
    else:
        accuracy = f", {preset.weights_accuracy}% top-1" if preset.weights_accuracy is not None else ""
        description = f"the authors' {preset.weights_dataset} weights{accuracy}"
    return dict(
        url=preset.weights_url,
        num_classes=config.num_classes,
        input_size=(config.in_chans, *config.img_size),
        fixed_input_size=config.positional_embedding != "none",  # the embedding fits one token grid
        interpolation="bicubic",  # the recipe's resize
        crop_pct=1.0,
        mean=config.mean,
        std=config.std,
        first_conv=FIRST_CONV,
        classifier=CLASSIFIER,
        license="apache-2.0",
        description=f"{name}: {description}",
        paper_name="Escaping the Big Data Paradigm with Compact Transformers",
        paper_ids="arXiv:2104.05704",
        origin_url="https://github.com/SHI-Labs/Compact-Transformers",
    )


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CompactTransformer) -> dict[str, torch.Tensor]:
    """timm's pretrained filter: our checkpoint fitting (a learnable positional embedding resized to the
    model's token grid, a sinusoidal one regenerated, a head of another class count replaced), then the keys
    checked, so that weights of another model are a CheckpointError naming them."""
    state = adapt_state_dict(model, state_dict, new_head=True)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"the weights do not belong to a {model.config.family} model of this size: missing keys "
            f"{missing[:8]}, unexpected keys {unexpected[:8]}"
        )
    return state


def _build_preset(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                  img_size: int | tuple[int, int] | None = None, drop_rate: float | None = None,
                  drop_path_rate: float | None = None, attn_drop_rate: float | None = None) -> CompactTransformer:
    """The preset with timm's argument names (None keeps the preset's value)."""
    given = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size, dropout=drop_rate,
                 drop_path=drop_path_rate, attn_dropout=attn_drop_rate)  # fmt: skip
    return build_model(get_preset(name).build_config(**{key: value for key, value in given.items() if value is not None}))


def _entrypoint(name: str) -> Callable[..., CompactTransformer]:
    """timm's model function for the preset ``name``, built by timm's ``build_model_with_cfg`` so that
    pretrained loading, head reset and input-channel adaptation follow timm."""
    from timm.models import build_model_with_cfg

    def create(pretrained: bool = False, *, pretrained_cfg: str | dict | None = None,
               pretrained_cfg_overlay: dict | None = None, pretrained_strict: bool = True,
               cache_dir: str | Path | None = None, num_classes: int | None = None, in_chans: int | None = None,
               img_size: int | tuple[int, int] | None = None, drop_rate: float | None = None,
               drop_path_rate: float | None = None, attn_drop_rate: float | None = None) -> CompactTransformer:
        # None = not given: timm fills num_classes, in_chans and img_size from the pretrained cfg
        model_args = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_rate=drop_rate,
                          drop_path_rate=drop_path_rate, attn_drop_rate=attn_drop_rate)  # fmt: skip
        return build_model_with_cfg(
            functools.partial(_build_preset, name), name, pretrained, pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay, pretrained_filter_fn=checkpoint_filter_fn,
            pretrained_strict=pretrained_strict, cache_dir=cache_dir,
            **{key: value for key, value in model_args.items() if value is not None},
        )  # fmt: skip

    create.__name__ = create.__qualname__ = name  # timm registers a function under its __name__
    create.__module__ = __name__
    create.__doc__ = f"{name} (compact_transformers preset) as a timm model."
    return create


def register_models() -> list[str]:
    """Register every vision preset in timm's registry (done on import); returns the names registered now.

    A name that timm already has for a model of its own is left to timm (with a warning); presets registered
    before are not registered again."""
    _import_timm()
    from timm.models import generate_default_cfgs, is_model, model_entrypoint, register_model

    names, taken = [], []
    for name in list_models(kind="vision"):
        if not is_model(name):
            names.append(name)
        elif model_entrypoint(name).__module__ != __name__:
            taken.append(name)
    if taken:
        warnings.warn(f"timm already has models named {taken}: those presets are not registered in timm",
                      stacklevel=2)
    default_cfgs.update(generate_default_cfgs({name: pretrained_cfg(name) for name in names}))
    for name in names:
        entrypoint = _entrypoint(name)
        globals()[name] = entrypoint  # a module attribute, as timm's own model functions are
        register_model(entrypoint)
    return names


# ----------------------------------------------------------------------------- any timm model, trained here


@dataclass
class TimmConfig:
    """A timm model as our training builds it: what rebuilds it (saved as JSON beside the weights), and the
    fields of our vision configs that `cct eval` / `cct predict` read (size, channels, classes, mean/std, extra)."""

    kind: ClassVar[str] = "timm"  # the kind of model in saved configs (models.weights.EXTERNAL_KINDS)

    model_name: str
    num_classes: int = 1000
    in_chans: int = 3
    img_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = DATASET_STATS["imagenet"][0]
    std: tuple[float, ...] = DATASET_STATS["imagenet"][1]
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    # what training records for inference (classes, dataset, preprocessing); not part of the network
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.num_classes < 1 or self.in_chans < 1:
            raise ConfigError(f"num_classes and in_chans must be >= 1, got {self.num_classes} and {self.in_chans}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> TimmConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TimmConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: object) -> TimmConfig:
        return dataclasses.replace(self, **changes)

    def build(self) -> TimmClassifier:
        return TimmClassifier(self)


def config_from_dict(data: dict) -> TimmConfig:
    """The config of a saved timm model (models.weights reads ``kind: timm`` configs with this)."""
    return TimmConfig.from_dict(data)


class TimmClassifier(nn.Module):
    """A timm model (``self.model``, randomly initialised) with a :class:`TimmConfig`, so that our training,
    checkpoints, `cct eval` and `cct predict` take it as one of ours. (B, C, H, W) float -> logits (B, classes)."""

    def __init__(self, config: TimmConfig) -> None:
        super().__init__()
        timm = _import_timm()
        name = config.model_name
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists them"
            raise ConfigError(f"unknown timm model {name!r}{hint}")
        args: dict = dict(num_classes=config.num_classes, in_chans=config.in_chans)
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as error:  # a pretrained tag that the model does not have
            raise ConfigError(f"timm model {name!r}: {error}") from None
        if cfg is not None and cfg.fixed_input_size:  # models built for one size take it; the others take any
            args["img_size"] = config.img_size
        # zero rates are left out: they are every timm model's default, and not every model takes both
        rates = dict(drop_rate=config.drop_rate, drop_path_rate=config.drop_path_rate)
        args.update({key: value for key, value in rates.items() if value})
        try:
            self.model = timm.create_model(name, **args)
        except TypeError as error:
            if "unexpected keyword argument" not in str(error):
                raise
            raise ConfigError(f"timm model {name} does not take a setting it was given ({error})") from None
        self.config = config

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ----------------------------------------------------------------------------------- timm's own scripts

USAGE = """usage: python -m compact_transformers.integrations.timm SCRIPT [ARGS ...]

Run a timm script (e.g. timm's train.py) as `python SCRIPT ARGS` would, with the Compact Transformer presets
registered in timm, so that e.g. `--model cct_7_3x1_32` names one."""


def main(argv: list[str] | None = None) -> int:
    """Run ``SCRIPT ARGS`` (``argv``, default the command line) with the presets registered in timm."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        raise ConfigError(f"no such script: {script}")
    register_models()  # already done on import if timm was found; raises naming the extra if it is not
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))  # as `python SCRIPT` does: the script's folder first
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _run_from_command_line() -> int:
    try:
        return main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m` runs this file as __main__, a second copy of the module: run through the importable one, so
    # that timm records the presets under this module's real name and they are registered once
    sys.exit(importlib.import_module("compact_transformers.integrations.timm")._run_from_command_line())
elif importlib.util.find_spec("timm") is not None:
    register_models()
