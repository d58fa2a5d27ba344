"""The ``cct`` command: train, eval, predict, info, export."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from .errors import UserError

logger = logging.getLogger(__name__)


class CliError(UserError):
    """A mistake in the command line: printed as one line, exit code 2."""


# ------------------------------------------------------------------------------------------------ info


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .models import PAPER_TABLE, complexity, create_model, get_preset, list_models

    if args.all or args.pattern:
        names = list_models(args.pattern or "*", kind=None if args.text else "vision")
        if not names:
            raise CliError(f"no model matches {args.pattern!r}{'' if args.text else ' (add --text for text models)'}; "
                           "see cct info --all")
    elif args.models:
        names = [get_preset(name).name for name in args.models]
    else:
        names = list(dict.fromkeys(list(PAPER_TABLE) + list_models(pretrained=True)))
    rows = []
    for name in names:
        preset = get_preset(name)
        with torch.device("meta"):  # shapes only: counting needs no memory and no compute
            model = create_model(name)
        row = complexity(model, name).to_dict()
        row.update(
            family=preset.config["family"],
            positional_embedding=model.config.positional_embedding,
            weights=preset.weights_url,
            weights_accuracy=preset.weights_accuracy,
            paper_accuracy=preset.paper_accuracy or None,
        )
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<26} {'family':<9} {'PE':<9} {'params':>11} {'MACs':>9} {'tokens':>6} {'input':>8} {'classes':>7}  weights"
    print(header)
    print("-" * len(header))
    for row in rows:
        size = "x".join(map(str, row["img_size"])) if row["img_size"] else "text"
        weights = f"yes ({row['weights_accuracy']}%)" if row["weights_accuracy"] else ("yes" if row["weights"] else "")
        print(
            f"{row['name']:<26} {row['family']:<9} {row['positional_embedding']:<9} {row['params']:>11,} "
            f"{row['macs'] / 1e9:>8.3f}G {row['tokens']:>6} {size:>8} {row['num_classes']:>7}  {weights}"
        )
    return 0


# ----------------------------------------------------------------------------------------------- train


# Options that `--resume` may change: how to run, never what is trained.
RESUMABLE = ("epochs", "quiet", "time_limit", "device", "compile", "workers")


def cmd_train(args: argparse.Namespace) -> int:
    from .training.budget import TimeBudget
    from .training.build import is_text_data, load_training_data
    from .training.loop import train
    from .training.recipe import ConfigSource, check_options_fit_data, explicit_args, pick_recipe
    from .training.rundir import check_output_folder, check_run_name, load_run_config
    from .training.runtime import select_device, tune_cpu
    from .training.state import check_resumable
    from .training.yaml_config import load_yaml_config

    started = time.monotonic()  # --time-limit covers the set-up below as well
    tune_cpu()
    given = explicit_args(args)
    if args.resume:
        if args.config or args.recipe != "auto":
            raise CliError("--resume continues a run as it was configured: it takes no --config or --recipe")
        refused = sorted(set(given) - set(RESUMABLE))
        if refused:
            raise CliError(f"--resume continues a run as configured; these options cannot change: {refused}")
        config = load_run_config(Path(args.resume)).replace(**given)
        check_resumable(Path(args.resume))
        budget = TimeBudget(config.time_limit, start=started) if config.time_limit is not None else None
        result = train(config, run_dir=Path(args.resume), resume=True, budget=budget)
    else:
        from_file = load_yaml_config(args.config) if args.config else {}
        merged = {**from_file, **given}
        text = is_text_data(merged.get("dataset"), merged.get("data"))
        if merged.get("dataset") or not merged.get("data") or Path(merged["data"]).expanduser().exists():
            check_options_fit_data(given, text=text, data=merged.get("dataset") or merged.get("data") or "digits")
        gpu = select_device(merged.get("device", "auto")).type == "cuda"
        source = ConfigSource(pick_recipe(args.recipe, merged, text=text, gpu=gpu), from_file, given)
        config, budget, data = source.resolve(), None, None
        if config.name is not None:
            check_run_name(config.name)  # before any data is read
        check_output_folder(config.output)
        if config.time_limit is not None:  # plan epochs (and the recipe's strength) for the budget
            budget = TimeBudget(config.time_limit, start=started)
            data = load_training_data(config)  # once: the probe and the run share it
            config = budget.plan(source, data)
        result = train(config, budget=budget, data=data)
    return 128 + result.signal if result.interrupted else 0


# ------------------------------------------------------------------------------------------------ eval


def _load_for_inference(source: str):
    from .models import create_model, get_preset, load_model
    from .training.state import run_model_dir

    if source.startswith("hf-hub:"):
        return load_model(source), None
    path = Path(source)
    model_path = run_model_dir(path)
    if model_path.exists():
        is_run = model_path != path
        return load_model(model_path), path if is_run else (path.parent if path.is_file() else path)
    if not source.endswith((".safetensors", ".pth", ".pt")):
        try:
            get_preset(source)
        except ValueError:
            raise CliError(f"model not found: {source} (expected a run directory, a saved model, a "
                           ".safetensors file, hf-hub:ORG/NAME or a preset with released weights)") from None
        return create_model(source, pretrained=True), None
    raise CliError(f"model not found: {source} (expected a run directory, a saved model or a .safetensors file)")


def _tta(config, args: argparse.Namespace) -> tuple[bool, int]:
    """(mirror views, shift of the shifted views in pixels) of test-time augmentation, as in the model's
    validation during training, unless --no-flip-tta / --no-shift-tta."""
    flip = bool(config.extra.get("flip_tta", False)) and not getattr(args, "no_flip_tta", False)
    shift = 0 if getattr(args, "no_shift_tta", False) else int(config.extra.get("shift_tta", 0))
    return flip, shift


def _add_tta_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-flip-tta", action="store_true",
                        help="no mirror-image test-time augmentation even if the model was validated with it")
    parser.add_argument("--no-shift-tta", action="store_true",
                        help="no shifted test-time views even if the model was validated with them")


def _eval_data(args: argparse.Namespace, config, run_dir: Path | None):
    """The dataset to evaluate on: the one the model was trained on, split as in its run, unless options say
    otherwise. A text model brings its own vocabulary and class list."""
    from .data import load_dataset
    from .data.text import Vocabulary, load_text_dataset

    extra = config.extra
    data_path = args.data or extra.get("data")
    if data_path is None and run_dir is not None and (run_dir / "config.yaml").exists():
        from .training.rundir import load_run_config

        data_path = load_run_config(run_dir).data  # the path the run was trained on
    dataset_name = args.dataset or (None if args.data else extra.get("dataset"))
    # the run's split of the data by default, so that its training samples never count as validation
    val_fraction = args.val_fraction if args.val_fraction is not None else extra.get("val_fraction", 0.0)
    if not 0 <= val_fraction < 1:
        raise CliError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    seed = args.seed if args.seed is not None else extra.get("seed", 0)
    if "vocab" in extra:
        if data_path is None:
            raise CliError("give the text dataset's files with --data")
        return load_text_dataset(
            dataset_name, data_path, val_fraction=val_fraction, seed=seed, seq_len=config.seq_len,
            vocab=Vocabulary.from_dict(extra["vocab"]), classes=extra.get("classes"),
            text_column=extra.get("text_column", "text"), label_column=extra.get("label_column", "label"),
            trec_fine=extra.get("trec_fine", False),
        )  # fmt: skip
    return load_dataset(dataset_name, data_path, val_fraction=val_fraction, seed=seed,
                        image_size=config.img_size if dataset_name in ("folder", "flowers102", None) else None)


def cmd_eval(args: argparse.Namespace) -> int:
    from .augment import EvalTransform, tta_view_count
    from .data.text import TextDataset
    from .fileio import atomic_write_text
    from .training.metrics import evaluate, evaluate_text
    from .training.plots import plot_confusion
    from .training.runtime import (
        autocast_dtype, inference_model, prepare_input, prepare_model, select_device, tune_cpu,
    )

    tune_cpu()
    model, run_dir = _load_for_inference(args.model)
    config = model.config
    data = _eval_data(args, config, run_dir)
    split = data.test if args.split == "test" else data.val
    if split is None:
        split, args.split = data.val, "val"
    if len(split) == 0:
        where = f" of {args.data}" if args.data else ""
        raise CliError(f"the {args.split} split of {data.name}{where} has no readable example: nothing to evaluate")
    if data.num_classes != config.num_classes:
        raise CliError(f"the model has {config.num_classes} classes, the dataset {data.name} {data.num_classes}")
    known = config.extra.get("classes")
    if known is not None and list(known) != list(data.classes):  # the same count of other classes: a wrong score
        i, ours, theirs = next((i, a, b) for i, (a, b) in enumerate(zip(known, data.classes)) if a != b)
        raise CliError(f"the model's classes are not the dataset's: class {i} is {ours!r} for the model, "
                       f"{theirs!r} in {data.name}; evaluate on data with the model's classes")
    device = select_device(args.device)
    model = prepare_model(model, device)
    autocast = autocast_dtype(device, not args.fp32)
    if isinstance(data, TextDataset):
        flip_tta, shift_tta, what = False, 0, "texts"
        result = evaluate_text(model, split.ids.to(device), split.lengths.to(device), split.labels.to(device),
                               data.num_classes, batch_size=args.batch_size, autocast=autocast)
    else:
        (flip_tta, shift_tta), what = _tta(config, args), "images"
        transform = EvalTransform.for_model(config)
        images = split.images.to(device)
        batches = -(-len(images) // args.batch_size) * tta_view_count(flip_tta, shift_tta)
        runner = inference_model(model, prepare_input(transform(images[: args.batch_size])), amp_dtype=autocast,
                                 batches=batches)
        result = evaluate(runner, images, split.labels.to(device), transform, data.num_classes,
                          batch_size=args.batch_size, autocast=autocast if runner is model else None,
                          flip_tta=flip_tta, shift_tta=shift_tta)
    classes = config.extra.get("classes") or list(data.classes)
    out_dir = Path(args.output) if args.output else (run_dir / "eval" if run_dir else Path("eval"))
    report = {
        "model": args.model, "dataset": data.name, "split": args.split, "flip_tta": flip_tta, "shift_tta": shift_tta,
        **result.summary(),
        "per_class": dict(zip(classes, result.per_class_accuracy())),
        "confusion": result.confusion.tolist(), "classes": classes,
    }  # fmt: skip
    atomic_write_text(out_dir / f"eval_{data.name}_{args.split}.json", json.dumps(report, indent=2))
    plot_confusion(result.confusion, classes, out_dir / f"confusion_{data.name}_{args.split}.png",
                   title=f"{data.name} {args.split}: top-1 {result.top1:.2f}%")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{data.name} {args.split} ({result.count} {what}): top-1 {result.top1:.2f}%  "
              f"top-5 {result.top5:.2f}%  loss {result.loss:.4f}")
        worst = sorted(zip(report["per_class"].values(), classes))[:5]
        print("lowest per-class accuracy: " + ", ".join(f"{name} {acc:.1f}%" for acc, name in worst))
        print(f"report and confusion matrix in {out_dir}")
    return 0


# --------------------------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .augment import EvalTransform, tta_logits
    from .data.images import IMAGE_EXTENSIONS, decode_image
    from .training.runtime import autocast_dtype, prepare_input, prepare_model, select_device, tune_cpu

    tune_cpu()
    if args.model.endswith(".onnx"):  # onnxruntime on the CPU, the preprocessing from the file's metadata
        from .integrations.export import load_onnx

        if args.explain:
            raise CliError("--explain needs the PyTorch model (a run directory or a saved model), not an .onnx file")
        model, device = load_onnx(args.model), torch.device("cpu")
        if model.config.seq_len is not None and "vocab" not in model.config.extra:
            raise CliError(f"{args.model} is a text model without a vocabulary: export a trained model")
    else:
        model, _ = _load_for_inference(args.model)
        device = select_device(args.device)
    config = model.config
    if "vocab" in config.extra:
        return _predict_texts(args, model, device)
    if args.file:
        raise CliError("--file gives texts, one per line, to a text model; this is an image model")
    if not args.inputs:
        raise CliError("give image files or folders to predict")
    files: list[Path] = []
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():
            files.append(path)
        else:
            raise CliError(f"input not found: {path}")
    if not files:
        raise CliError(f"no images found in {' '.join(args.inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    model = prepare_model(model, device).eval()
    transform = EvalTransform.for_model(config)
    classes = config.extra.get("classes") or [str(i) for i in range(config.num_classes)]
    mode = "L" if config.in_chans == 1 else "RGB"
    amp = autocast_dtype(device, not args.fp32)
    flip_tta, shift_tta = _tta(config, args)
    writer = None
    if args.explain:
        from .explain import ExplanationWriter, tta_logits_and_weights

        writer = ExplanationWriter(args.explain, args.model)
    predicted, first_failure = 0, None
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        images, readable = [], []
        for path in chunk:
            try:
                array = decode_image(path, config.img_size, mode)
            except Exception as error:  # noqa: BLE001 - report and go on with the other files
                print(f"warning: cannot read {path}: {error}", file=sys.stderr)
                first_failure = first_failure or (error if str(path) in str(error) else f"{path}: {error}")
                continue
            tensor = torch.from_numpy(array)
            images.append(tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1))
            readable.append(path)
        if not images:
            continue
        batch = prepare_input(transform(torch.stack(images).to(device)))
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if writer is None:
                probs = tta_logits(model, batch, flip_tta, shift_tta).softmax(dim=1)
            else:  # the same forward pass, which also returns the token weights
                logits, weights = tta_logits_and_weights(model, batch, flip_tta, shift_tta)
                probs = logits.softmax(dim=1)
        for index, (path, preds) in enumerate(zip(readable, _top_k(probs, classes, args.top_k))):
            _print_prediction(args, {"file": str(path)}, str(path), preds)
            if writer is not None:
                writer.add_image(path, config.img_size, weights[index], preds)
        predicted += len(readable)
    if predicted == 0:
        raise CliError(f"none of the {len(files)} file(s) could be read as an image ({first_failure}): nothing "
                       "predicted")
    if writer is not None:
        logger.info("heat maps and explanations.json in %s", writer.close())
    return 0


def _print_prediction(args: argparse.Namespace, key: dict, shown: str, preds: list[dict]) -> None:
    if args.json:
        print(json.dumps({**key, "predictions": preds}))
    else:
        print(f"{shown}: " + ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in preds))


def _top_k(probs, classes: list[str], k: int) -> list[list[dict]]:
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[{"label": classes[i], "index": i, "probability": round(p, 6)} for p, i in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())]  # fmt: skip


def _predict_texts(args: argparse.Namespace, model, device) -> int:
    """Top-k labels of texts: arguments, lines of --file, or lines of stdin (the argument "-")."""
    from .data.text import Vocabulary, encode_texts
    from .training.metrics import predict_text_logits
    from .training.runtime import autocast_dtype, prepare_model

    texts = [text for text in args.inputs if text != "-"]
    if args.file:
        data = Path(args.file).read_bytes()
        try:
            texts += data.decode("utf-8-sig").splitlines()
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise CliError(f"--file {args.file}:{line}: not UTF-8 text ({error.reason}); expected texts, one per "
                           "line") from None
    if "-" in args.inputs:
        texts += sys.stdin.read().splitlines()
    if not texts:
        raise CliError('give texts to classify: as arguments, with --file FILE (one per line), or "-" for stdin')
    config = model.config
    ids, lengths = encode_texts(texts, Vocabulary.from_dict(config.extra["vocab"]), config.seq_len)
    model = prepare_model(model, device).eval()
    classes = config.extra.get("classes") or [str(i) for i in range(config.num_classes)]
    if args.explain:
        return _explain_texts(args, model, texts, classes, autocast_dtype(device, not args.fp32))
    for start in range(0, len(texts), args.batch_size):
        chunk = slice(start, start + args.batch_size)
        logits = predict_text_logits(model, ids[chunk].to(device), lengths[chunk].to(device),
                                     autocast=autocast_dtype(device, not args.fp32))
        for text, preds in zip(texts[chunk], _top_k(logits.softmax(dim=1), classes, args.top_k)):
            shown = text if len(text) <= 60 else text[:57] + "..."
            _print_prediction(args, {"text": text}, repr(shown), preds)
    return 0


def _explain_texts(args: argparse.Namespace, model, texts: list[str], classes: list[str], autocast) -> int:
    """``--explain DIR`` for texts: the top-k as without it, and the words coloured by weight in DIR/texts.html."""
    import torch

    from .data.text import Vocabulary
    from .explain import ExplanationWriter, explain_texts

    writer = ExplanationWriter(args.explain, args.model)
    explanations = explain_texts(model, texts, Vocabulary.from_dict(model.config.extra["vocab"]),
                                 batch_size=args.batch_size, autocast=autocast)
    logits = torch.stack([explanation.logits for explanation in explanations])
    for text, explanation, preds in zip(texts, explanations, _top_k(logits.softmax(dim=1), classes, args.top_k)):
        shown = text if len(text) <= 60 else text[:57] + "..."
        _print_prediction(args, {"text": text}, repr(shown), preds)
        writer.add_text(text, explanation, preds)
    logger.info("coloured words (texts.html) and explanations.json in %s", writer.close())
    return 0


# ---------------------------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from .integrations.export import export_model

    output = args.output or args.output_path
    if output is None:
        raise CliError("give the output path: cct export MODEL OUTPUT (or --output OUTPUT)")
    model, run_dir = _load_for_inference(args.model)
    if args.format == "hub":
        path = model.save_pretrained(output, card=_card_info(run_dir))
        print(f"wrote {path} (config.json, model.safetensors, README.md): upload it with `cct hub push {path} ORG/NAME`")
        return 0
    if args.format == "hf":  # a transformers directory: config, weights, image processor or tokenizer
        from .integrations.transformers import export_transformers

        print(f"wrote {export_transformers(model, output)} (load it with transformers after importing "
              "compact_transformers.integrations.transformers)")
        return 0
    path = export_model(model, output, fmt=args.format, opset=args.opset, name=args.model,
                        verify=not args.no_verify, tolerance=args.tolerance)
    print(f"wrote {path}")
    return 0


def _card_info(run_dir: Path | None):
    """A model card's results and recipe when the model comes from a run directory."""
    from .training.rundir import CONFIG_FILE, run_card_info

    return run_card_info(run_dir) if run_dir is not None and (run_dir / CONFIG_FILE).exists() else None


def cmd_hub_push(args: argparse.Namespace) -> int:
    import tempfile

    from .models.hub import push_to_hub

    model, run_dir = _load_for_inference(args.model)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory, card=_card_info(run_dir))
        url = push_to_hub(directory, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.model} to {url}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.weights import convert_checkpoint

    model = convert_checkpoint(args.checkpoint, args.model_name, num_classes=args.num_classes)
    path = model.save_pretrained(args.output)
    print(f"wrote {path} ({args.model_name}, {model.config.num_classes} classes): "
          f"load it with load_model({str(path)!r}) or `cct predict {path} ...`")
    return 0


# ------------------------------------------------------------------------------------------------ main


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and the exit code 2 of every user error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .benchmark import add_bench_arguments
    from .training.recipe import GROW_AT_IMAGES, add_config_arguments

    parser = _Parser(prog="cct", description="Compact Transformers: train from scratch on small data.")
    parser.add_argument("-v", "--verbose", "--debug", action="store_true",
                        help="debug logging, and tracebacks for errors too")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a model (default: CCT-2 on the bundled digits)",
                                description="Train with the paper's recipe. Precedence: recipe < --config YAML < options.")
    train.add_argument("--config", help="YAML config: ours or the authors' timm-style files")
    train.add_argument("--recipe", default="auto",
                       help="auto (digits for the bundled data, text for text, else small; small-gpu on a GPU when no "
                            "--model or --batch-size is given), paper, small, small-gpu, digits, text. small trains "
                            "CCT-4/3x2 instead of CCT-2/3x2 when --time-limit fits epochs x training images of "
                            f"{GROW_AT_IMAGES:,} or more of CCT-2 (50 epochs of 60,000) and no --model is given")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    add_config_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained model: top-1/top-5, per-class, confusion matrix")
    evaluate.add_argument("model", help="run directory, saved model directory or .safetensors file")
    evaluate.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    evaluate.add_argument("--data", help="dataset path")
    evaluate.add_argument("--split", choices=("val", "test"), default="test")
    evaluate.add_argument("--val-fraction", type=float, default=None, help="(default: the run's, else 0)")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of the validation split (default: the run's, else 0)")
    evaluate.add_argument("--batch-size", type=positive_int, default=512)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--fp32", action="store_true", help="no mixed precision")
    _add_tta_options(evaluate)
    evaluate.add_argument("--output", help="folder for the report (default: RUN/eval)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", help="top-k labels for image files or folders, or for texts")
    predict.add_argument("model", help="run directory, saved model directory, .safetensors file or .onnx file "
                                       "(run by onnxruntime on the CPU)")
    predict.add_argument("inputs", nargs="*", help='image files or folders; for a text model texts ("-": stdin lines)')
    predict.add_argument("--file", help="text model: a file of texts, one per line")
    predict.add_argument("--top-k", type=positive_int, default=3)
    predict.add_argument("--batch-size", type=positive_int, default=256)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--fp32", action="store_true")
    _add_tta_options(predict)
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--explain", metavar="DIR",
                         help="also write where the model looked: per image a PNG with the heat map of its token "
                              "weights (SeqPool's, or the class token's attention) and the top-k; for texts the "
                              "words coloured by weight in DIR/texts.html; all weights in DIR/explanations.json")
    predict.set_defaults(func=cmd_predict)

    info = commands.add_parser("info", help="parameters, MACs and tokens of models")
    info.add_argument("models", nargs="*", help="preset names (default: the paper's table and released weights)")
    info.add_argument("--all", action="store_true", help="every preset")
    info.add_argument("--pattern", help="shell pattern, e.g. 'cct_7_*'")
    info.add_argument("--text", action="store_true", help="include text models with --all/--pattern")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    export = commands.add_parser("export", help="export a model: ONNX, torch.export, safetensors, Hugging Face Hub layout")
    export.add_argument("model", help="run directory, saved model, .safetensors file or preset name")
    export.add_argument("output_path", nargs="?", metavar="OUTPUT", help="output file (a directory for safetensors/hub)")
    export.add_argument("--format", choices=("onnx", "pt2", "safetensors", "hub", "hf"), default="onnx",
                        help="hub: config.json + model.safetensors + a model card README.md, as on the Hub")
    export.add_argument("--output", help="the same as OUTPUT")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--no-verify", action="store_true",
                        help="onnx: skip the check of onnxruntime's logits against PyTorch's on a random batch")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="onnx: the largest |difference| of the logits allowed, times max(1, max |logits|)")
    export.set_defaults(func=cmd_export)

    hub = commands.add_parser("hub", help="the Hugging Face Hub: push a model (load one with hf-hub:ORG/NAME)")
    hub_commands = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    push = hub_commands.add_parser("push", help="upload a model with its model card to a Hub repository")
    push.add_argument("model", help="run directory, saved model or .safetensors file")
    push.add_argument("repo_id", help="ORG/NAME (created if missing)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="Hub token (default: the one saved by `huggingface-cli login`, or $HF_TOKEN)")
    push.set_defaults(func=cmd_hub_push)

    convert = commands.add_parser("convert", help="turn the authors' .pth checkpoint into a saved model (Hub layout)")
    convert.add_argument("checkpoint", help="the authors' .pth (or any state dict of a preset)")
    convert.add_argument("--model", dest="model_name", required=True, help="the preset it was trained as, e.g. cct_7_3x1_32")
    convert.add_argument("--num-classes", type=int, default=None, help="(default: read from the checkpoint's head)")
    convert.add_argument("--output", required=True, help="output directory")
    convert.set_defaults(func=cmd_convert)

    demo = commands.add_parser("demo", help="a local web page to try a model: drop images or type texts, see the "
                                             "top-k and where the model looked (needs the [demo] extra)")
    demo.add_argument("model", help="run directory, saved model (Hub layout too), .safetensors file or hf-hub:ORG/NAME")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    demo.add_argument("--port", type=positive_int, default=None, help="(default: 7860, or the next free port)")
    demo.add_argument("--top-k", type=positive_int, default=5)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--fp32", action="store_true")
    _add_tta_options(demo)
    demo.add_argument("--batch-size", type=positive_int, default=64, help="images or texts per forward pass")
    demo.add_argument("--max-batch-size", type=positive_int, default=16,
                      help="concurrent requests answered together in one batch")
    demo.add_argument("--max-upload-mb", type=float, default=10.0, help="largest file accepted")
    demo.add_argument("--max-image-side", type=positive_int, default=4096,
                      help="largest image side accepted, in pixels")
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser("bench", help="training / inference speed against an in-run baseline",
                                description="Measure img/s, TFLOP/s against the measured matmul peak, "
                                            "peak memory; baseline and fast variants interleaved.")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import run_bench

    return run_bench(args)


def _interrupt_on_sigterm() -> object:
    """SIGTERM raises errors.Interrupted, so that it unwinds like Ctrl-C (the training loop installs its own
    graceful handler while it runs) instead of killing the process without a word. Returns the previous
    handler (None when handlers cannot be set: not the main thread)."""
    from .errors import Interrupted

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    previous_sigterm = _interrupt_on_sigterm()
    try:
        code = _run(args)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_torchrun_rank(code)
    return code


def _leave_torchrun_rank(code: int) -> NoReturn:
    """End a torchrun rank whose run is over (saved, process group left) without interpreter finalisation:
    tearing down gloo's threads at exit sometimes aborted a rank after a complete run (SIGABRT, "terminate
    called without an active exception"), which torchrun then reports as a failed job."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """A command, its errors turned into one line on stderr and the exit code."""
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe (`cct info | head`) shows up here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader has gone: not an error, and nothing more to print
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except ImportError as error:
        print(f"cct {args.command}: error: {error.name or error} is not installed; "
              "pip install 'compact-transformers[all]'", file=sys.stderr)
        return 2
    except (UserError, OSError) as error:
        if isinstance(error, OSError) and error.filename is None:
            raise  # not about a file of the user's: a bug, keep the traceback
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"cct {args.command}: error: {message}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM as errors.Interrupted
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"cct {args.command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
