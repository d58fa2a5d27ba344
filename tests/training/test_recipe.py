from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from compact_transformers.errors import ConfigError
from compact_transformers.training.recipe import (
    GROW_AT_IMAGES,
    RECIPES,
    ConfigSource,
    TrainConfig,
    add_config_arguments,
    apply_recipe,
    explicit_args,
    larger_model_for,
    pick_recipe,
    resolve_config,
)
from compact_transformers.training.yaml_config import load_yaml_config

REF_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference-configs"
REF_FILES = sorted(REF_DIR.glob("*.yml")) if REF_DIR.is_dir() else []
_NO_REF = pytest.param(
    None,
    marks=pytest.mark.skip(reason=f"{REF_DIR} is absent (the authors' configs live only in the project workspace)"),
)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser


# --- TrainConfig -------------------------------------------------------------------------


def test_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.epochs, c.warmup_epochs, c.cooldown_epochs, c.batch_size) == (300, 10, 10, 128)
    assert (c.lr, c.min_lr, c.warmup_lr, c.weight_decay, c.smoothing) == (5.5e-4, 1e-5, 1e-5, 0.06, 0.1)
    assert (c.mixup, c.cutmix, c.mixup_switch_prob) == (0.8, 1.0, 0.5)
    assert c.aa == "rand-m9-mstd0.5-inc1" and c.opt == "adamw" and c.betas == (0.9, 0.999)


def test_scaled_lr_is_linear_in_batch_size():
    assert TrainConfig(batch_size=256).scaled_lr == pytest.approx(2 * 5.5e-4)
    assert TrainConfig(batch_size=32, lr=1e-3, lr_base_batch=64).scaled_lr == pytest.approx(5e-4)


def test_dict_round_trip_and_yaml_round_trip(tmp_path):
    c = TrainConfig(model="cct_7_3x1_32", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), aa=None, clip_grad=1.0)
    d = c.to_dict()
    assert d["mean"] == [0.5, 0.4, 0.3] and isinstance(d["betas"], list)
    assert TrainConfig.from_dict(d) == c
    path = tmp_path / "saved.yml"
    path.write_text(yaml.safe_dump(d))
    assert TrainConfig.from_dict(load_yaml_config(path)) == c


def test_unknown_key_names_it_and_suggests_close_matches():
    with pytest.raises(ValueError, match=r"'warmup_epoch'.*'warmup_epochs'"):
        TrainConfig.from_dict({"warmup_epoch": 3})
    with pytest.raises(ValueError, match=r"'batchsize'.*'batch_size'"):
        TrainConfig().replace(batchsize=3)


def test_coercion_of_strings_and_lists():
    c = TrainConfig.from_dict({"lr": "55e-5", "epochs": "20", "mean": [0.5], "std": [0.25], "aa": "none"})
    assert c.lr == pytest.approx(5.5e-4) and c.epochs == 20 and isinstance(c.epochs, int)
    assert c.mean == (0.5,) and c.std == (0.25,) and c.aa is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sched": "step"}, "sched must be one of"),
        ({"opt": "lamb"}, "opt must be one of"),
        ({"epochs": 15}, r"warmup_epochs \(10\) \+ cooldown_epochs \(10\) must be <= epochs \(15\)"),
        ({"epochs": 2.5}, "whole number"),
        ({"lr": "fast"}, "lr must be a float"),
        ({"amp": "maybe"}, "amp must be true or false"),
        ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
        ({"scale": (0.9, 0.5)}, "scale must be two values"),
        ({"epochs": None}, "epochs cannot be none"),
    ],
)
def test_bad_values_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**changes)


# --- recipes -----------------------------------------------------------------------------


def test_paper_recipe_equals_defaults():
    assert apply_recipe(TrainConfig(), "paper") == TrainConfig()


@pytest.mark.parametrize("epochs, warmup, cooldown", [(300, 10, 10), (100, 5, 5), (40, 2, 2), (10, 1, 0), (2, 0, 0)])
def test_small_recipe_scales_warmup_and_cooldown(epochs, warmup, cooldown):
    c = apply_recipe(TrainConfig(), "small", epochs=epochs)
    assert (c.epochs, c.warmup_epochs, c.cooldown_epochs) == (epochs, warmup, cooldown)


@pytest.mark.parametrize("epochs", [2, 14, 20, 300])
def test_small_recipe_regularisation_ends(epochs):
    c = apply_recipe(TrainConfig(), "small", epochs=epochs)
    paper = TrainConfig()
    assert c.uses_flip_tta and not paper.uses_flip_tta
    if epochs <= 20:  # brief: no RandAugment, mixing, shifts or dropout, a higher rate
        assert (c.aa, c.mixup, c.cutmix, c.drop_path, c.attn_drop, c.translate) == (None, 0.0, 0.0, 0.0, 0.0, 0)
        assert c.lr > paper.lr and c.scale == (1.0, 1.0)
    else:  # the paper's length: the paper's augmentation
        assert (c.aa, c.mixup, c.cutmix, c.mixup_prob, c.lr, c.scale) == (
            paper.aa, paper.mixup, paper.cutmix, 1.0, paper.lr, paper.scale)


def _strengths(epochs: int) -> dict[str, float]:
    """The small recipe's regularisation at ``epochs`` as numbers that grow with strength."""
    from compact_transformers.augment import parse_randaugment

    c = apply_recipe(TrainConfig(), "small", epochs=epochs)
    mixing = c.mixup_prob if (c.mixup or c.cutmix) else 0.0
    return {"magnitude": parse_randaugment(c.aa).magnitude if c.aa else 0.0, "mixing": mixing,
            "drop_path": c.drop_path, "attn_drop": c.attn_drop, "crop": 1.0 - c.scale[0],
            "translate": c.translate, "lower_lr": -c.lr}  # fmt: skip


def test_small_recipe_regularisation_grows_smoothly_with_epochs():
    """No cliff: every knob is non-decreasing in the epochs, and one more epoch moves none of them by much."""
    previous = _strengths(1)
    for epochs in range(2, 401):
        now = _strengths(epochs)
        for name, value in now.items():
            assert value >= previous[name] - 1e-12, (name, epochs)
        assert now["mixing"] - previous["mixing"] <= 0.01 and now["attn_drop"] - previous["attn_drop"] <= 0.001
        assert now["magnitude"] - previous["magnitude"] <= 1 and now["drop_path"] - previous["drop_path"] <= 0.011
        assert now["lower_lr"] - previous["lower_lr"] <= 0.02 * 2e-3
        previous = now
    # the tier that lost accuracy (81 epochs jumped to the full recipe) is now a fifth of the way
    at_81 = apply_recipe(TrainConfig(), "small", epochs=81)
    assert at_81.mixup_prob < 0.25 and at_81.lr > 1.5e-3 and at_81.aa == "rand-m2-mstd0.5-inc1"


def test_digits_recipe():
    c = apply_recipe(TrainConfig(model="cct_2_3x2_32", dataset="digits"), "digits")
    assert c.img_size == 16 and c.aa is None and c.hflip == 0.0 and c.mixup == 0.0 and c.cutmix == 0.0
    assert c.epochs == 30 and c.batch_size == 64 and c.warmup_epochs == 1
    assert c.dataset == "digits"  # a recipe leaves what is trained alone


def test_recipe_overrides_earlier_values_and_unknown_recipe_lists_names():
    assert apply_recipe(TrainConfig(lr=1.0), "paper").lr == TrainConfig().lr
    with pytest.raises(ValueError, match="paper, small, small-gpu, digits"):
        apply_recipe(TrainConfig(), "tiny")
    assert set(RECIPES) >= {"paper", "small", "digits"}


# --- YAML --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", REF_FILES or [_NO_REF], ids=lambda p: p.name if p else "absent")
def test_authors_yaml_files_parse(path):
    raw = yaml.safe_load(path.read_text())
    loaded = load_yaml_config(path)
    c = TrainConfig().replace(**loaded)
    assert c.lr == pytest.approx(float(raw["lr"]))
    assert c.scaled_lr == pytest.approx(float(raw["lr"]))  # the file's lr is for the file's batch size
    assert c.weight_decay == pytest.approx(float(raw["weight_decay"]))
    assert c.min_lr == pytest.approx(float(raw["min_lr"]))
    assert (c.epochs, c.batch_size, c.mixup_off_epoch) == (raw["epochs"], raw["batch_size"], raw["mixup_off_epoch"])
    assert (c.dataset, c.num_classes, c.img_size) == (raw["dataset"], raw["num_classes"], raw["img_size"])
    assert c.mean == tuple(raw["mean"]) and c.std == tuple(raw["std"]) and c.scale == tuple(raw["scale"])
    assert c.aa == raw["aa"] and c.reprob == pytest.approx(float(raw["reprob"]))
    assert c.model == raw.get("model", TrainConfig().model)
    assert c.pretrained is None  # `pretrained: True` (download) is not a file path


@pytest.mark.skipif(not (REF_DIR / "datasets__cifar10.yml").is_file(), reason=f"{REF_DIR} is absent")
def test_authors_cifar10_values():
    c = TrainConfig().replace(**load_yaml_config(REF_DIR / "datasets__cifar10.yml"))
    assert c.lr == 0.00055 and c.mixup_off_epoch == 175 and c.reprob == 0.25 and c.workers == 8
    assert c.mean == (0.4914, 0.4822, 0.4465) and c.scale == (0.8, 1.0) and c.num_classes == 10


def test_yaml_timm_keys_mapped_or_ignored(tmp_path, caplog):
    path = write_yaml(
        tmp_path,
        "opt_eps: 1e-6\nopt_betas: [0.8, 0.99]\ninput_size: [3, 24, 24]\ncrop_pct: 0.9\n"
        "experiment: demo\ninitial_checkpoint: w.safetensors\nmixup_mode: batch\nweight_decay: 6e-2\n",
    )
    with caplog.at_level(logging.INFO, logger="compact_transformers.training.yaml_config"):
        d = load_yaml_config(path)
    assert d == {
        "eps": 1e-6, "betas": (0.8, 0.99), "img_size": 24, "name": "demo",
        "pretrained": "w.safetensors", "weight_decay": 0.06,
    }  # fmt: skip
    assert "crop_pct" in caplog.text


def test_yaml_lr_base_uses_timm_base_batch(tmp_path):
    d = load_yaml_config(write_yaml(tmp_path, "lr_base: 1e-3\nbatch_size: 128\n"))
    assert TrainConfig().replace(**d).scaled_lr == pytest.approx(1e-3 * 128 / 256)


def test_yaml_unknown_key_and_unsupported_values(tmp_path):
    with pytest.raises(ValueError, match=r"'learning_rate'"):
        load_yaml_config(write_yaml(tmp_path, "learning_rate: 0.1\n"))
    with pytest.raises(ValueError, match=r"mixup_mode 'elem' is not supported"):
        load_yaml_config(write_yaml(tmp_path, "mixup_mode: elem\n"))
    with pytest.raises(ValueError, match="expected a mapping"):
        load_yaml_config(write_yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ValueError, match="opt must be one of"):
        TrainConfig().replace(**load_yaml_config(write_yaml(tmp_path, "opt: lamb\n")))
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml_config(tmp_path / "missing.yml")


# --- command line ------------------------------------------------------------------------


def test_parser_has_one_option_per_field_and_defaults_none():
    parser = make_parser()
    args = parser.parse_args([])
    assert all(getattr(args, name) is None for name in TrainConfig().to_dict())
    assert explicit_args(args) == {}
    assert "--batch-size" in parser.format_help() and "--no-amp" in parser.format_help()


def test_cli_options_parse_to_fields():
    args = make_parser().parse_args(
        ["--batch-size", "32", "--no-amp", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.2",
         "--aa", "none", "--clip-grad", "1.5", "--model-ema", "--scale", "0.5", "1"]
    )  # fmt: skip
    c = TrainConfig().replace(**explicit_args(args))
    assert c.batch_size == 32 and c.amp is False and c.model_ema is True
    assert c.mean == (0.5, 0.4, 0.3) and c.aa is None and c.clip_grad == 1.5 and c.scale == (0.5, 1.0)
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--epochs", "many"])


def test_positional_embedding_option_takes_none_as_a_choice_not_as_unset():
    assert TrainConfig().positional_embedding == "model"  # the preset's own
    args = make_parser().parse_args(["--positional-embedding", "none"])
    assert TrainConfig().replace(**explicit_args(args)).positional_embedding == "none"
    with pytest.raises(ValueError, match="positional_embedding must be one of model, learnable, sine, none"):
        TrainConfig().replace(positional_embedding="rotary")


def test_precedence_recipe_then_yaml_then_cli(tmp_path):
    path = write_yaml(tmp_path, "epochs: 40\nlr: 1e-3\nweight_decay: 0.01\n")
    args = make_parser().parse_args(["--lr", "2e-3", "--no-amp"])
    c = resolve_config(recipe="small", from_file=load_yaml_config(path), from_cli=explicit_args(args))
    assert c.epochs == 40 and c.weight_decay == 0.01  # YAML over recipe
    assert c.warmup_epochs == 2 and c.cooldown_epochs == 2  # recipe scaling follows the final epochs
    assert c.lr == 2e-3 and c.amp is False  # command line over YAML

    args = make_parser().parse_args(["--epochs", "100", "--warmup-epochs", "7"])
    c = resolve_config(recipe="small", from_file=load_yaml_config(path), from_cli=explicit_args(args))
    assert (c.epochs, c.warmup_epochs, c.cooldown_epochs) == (100, 7, 5)
    assert resolve_config() == TrainConfig()


def test_flip_tta_only_for_models_trained_on_mirror_images():
    assert TrainConfig(flip_tta=True, hflip=0.5).uses_flip_tta
    assert not TrainConfig(flip_tta=True, hflip=0.0).uses_flip_tta
    assert not TrainConfig(flip_tta=False, hflip=0.5).uses_flip_tta


def test_shift_tta_only_for_models_trained_on_shifted_images():
    assert TrainConfig(shift_tta=1, translate=2).uses_shift_tta == 1
    assert TrainConfig(shift_tta=1, translate=0).uses_shift_tta == 0
    with pytest.raises(ValueError, match=r"shift_tta \(3\) must be <= translate \(2\)"):
        TrainConfig(shift_tta=3, translate=2)
    with pytest.raises(ValueError, match="shift_tta must be >= 0"):
        TrainConfig(shift_tta=-1)
    # the small recipe asks for it; it is used once the planned epochs train with shifts
    assert resolve_config(recipe="small").shift_tta == 1 and resolve_config(recipe="paper").shift_tta == 0
    assert apply_recipe(TrainConfig(), "small", epochs=10).uses_shift_tta == 0
    assert apply_recipe(TrainConfig(), "small", epochs=60).uses_shift_tta == 1
    with pytest.raises(ValueError, match="translate"):
        TrainConfig(translate=-1)


def test_auto_recipe_follows_the_dataset_and_unknown_recipes_are_refused():
    assert pick_recipe("auto", {}) == "digits"
    assert pick_recipe("auto", {"dataset": "digits"}) == "digits"
    assert pick_recipe("auto", {"data": "/some/folder"}) == "small"
    assert pick_recipe("paper", {"dataset": "cifar10"}) == "paper"
    with pytest.raises(ConfigError, match="auto or one of"):
        pick_recipe("fastest", {})


def test_on_a_gpu_the_default_small_run_trains_a_larger_model_at_batch_512():
    fashion = {"dataset": "fashion_mnist"}
    assert pick_recipe("auto", fashion, gpu=True) == "small-gpu"
    assert pick_recipe("auto", {"data": "/some/folder"}, gpu=True) == "small-gpu"
    # what the user chose is kept: their model or batch size gets the small recipe as on the CPU
    assert pick_recipe("auto", {**fashion, "model": "cct_2_3x2_32"}, gpu=True) == "small"
    assert pick_recipe("auto", {**fashion, "batch_size": 128}, gpu=True) == "small"
    assert pick_recipe("auto", {}, gpu=True) == "digits" and pick_recipe("auto", fashion, text=True, gpu=True) == "text"
    cpu, gpu = ConfigSource("small", from_cli=fashion), ConfigSource("small-gpu", from_cli=fashion)
    for epochs in (10, 60, 300):  # the same recipe, for a larger model at batch 512, at the same rate
        on_cpu, on_gpu = cpu.resolve(epochs=epochs), gpu.resolve(epochs=epochs)
        assert (on_cpu.model, on_cpu.batch_size, on_gpu.model, on_gpu.batch_size) == \
            ("cct_2_3x2_32", 128, "cct_7_3x2_32", 512)
        assert on_gpu.scaled_lr == pytest.approx(on_cpu.scaled_lr)
        differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(on_cpu, f.name) != getattr(on_gpu, f.name)}
        assert differ == {"model", "batch_size", "lr_base_batch"}
    assert ConfigSource("small-gpu", from_cli={**fashion, "model": "cvt_7_4_32"}).resolve().model == "cvt_7_4_32"


def test_a_long_small_run_grows_its_model_unless_one_was_chosen():
    fashion = {"dataset": "fashion_mnist"}
    small = ConfigSource("small", from_cli=fashion)
    assert larger_model_for(small, 49, train_images=60_000) is None  # GROW_AT_IMAGES = 50 epochs of 60,000
    assert larger_model_for(small, 50, train_images=60_000) == "cct_4_3x2_32"
    assert larger_model_for(small, 100, train_images=5_000) is None  # a small dataset keeps the small model
    assert larger_model_for(small, 100, train_images=GROW_AT_IMAGES // 100) == "cct_4_3x2_32"
    grown = small.with_model("cct_4_3x2_32")
    assert grown.resolve(epochs=60).model == "cct_4_3x2_32"
    # the larger model trains with the recipe the smaller one would have had for those epochs
    differ = {f.name for f in dataclasses.fields(TrainConfig)
              if getattr(grown.resolve(epochs=60), f.name) != getattr(small.resolve(epochs=60), f.name)}
    assert differ == {"model"}
    assert larger_model_for(grown, 300, train_images=60_000) is None  # grown once only
    # a model or weights the user gave (by option or in a YAML file) are kept; other recipes do not grow
    def grows(source: ConfigSource) -> bool:
        return larger_model_for(source, 300, train_images=60_000) is not None

    assert not grows(ConfigSource("small", from_cli={**fashion, "model": "cct_2_3x2_32"}))
    assert not grows(ConfigSource("small", from_file={"model": "cct_2_3x2_32"}, from_cli=fashion))
    assert not grows(ConfigSource("small", from_cli={**fashion, "pretrained": "w.safetensors"}))
    assert grows(small) and not any(grows(ConfigSource(recipe, from_cli=fashion))
                                    for recipe in ("paper", "small-gpu", "digits", "text"))


def test_planned_epochs_rescale_the_recipe_and_shrink_unfixed_warmup_cooldown():
    small = ConfigSource("small", from_cli={"dataset": "fashion_mnist"})
    planned = small.resolve(epochs=20, eval_interval=3)
    # the small recipe re-derives its epoch-dependent settings for the planned count
    assert planned == apply_recipe(TrainConfig(), "small", epochs=20).replace(dataset="fashion_mnist", eval_interval=3)
    # the paper recipe's fixed 10 + 10 warmup/cooldown would not fit 15 epochs: they shrink in proportion
    paper = ConfigSource("paper").resolve(epochs=15)
    assert (paper.epochs, paper.warmup_epochs, paper.cooldown_epochs) == (15, 0, 0)
    paper = ConfigSource("paper").resolve(epochs=60)
    assert (paper.epochs, paper.warmup_epochs, paper.cooldown_epochs) == (60, 10, 10)  # they fit: unchanged
    # ... unless an option fixed them
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ConfigSource("paper", from_cli={"warmup_epochs": 16}).resolve(epochs=15)
    fixed = ConfigSource("paper", from_cli={"warmup_epochs": 5}).resolve(epochs=15)
    assert (fixed.warmup_epochs, fixed.cooldown_epochs) == (5, 10)  # 5 + 10 fit 15 epochs


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yml:2:\d+: not valid YAML"):
        load_yaml_config(write_yaml(tmp_path, "epochs: 3\n  lr: 2\n"))


def test_text_recipe_scales_word_dropout_with_the_epochs():
    brief, long = apply_recipe(TrainConfig(), "text", epochs=5), apply_recipe(TrainConfig(), "text", epochs=40)
    assert brief.word_dropout == 0.0 and long.word_dropout == 0.1
    assert brief.attn_drop == long.attn_drop == 0.0  # word dropout instead: cheaper on a CPU
    assert long.mixup == long.cutmix == 0.0 and long.aa is None and long.batch_size == 64
    assert (long.warmup_epochs, long.cooldown_epochs) == (2, 2)
    assert long.model == "text_cct_2_1x1"  # text data needs a text model: the paper's CCT-2/1x1 by default
