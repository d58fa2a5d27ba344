"""The Hugging Face Hub: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``, model cards, ``hf-hub:`` ids.

Our native model directory already is the Hub layout that ``huggingface_hub.PyTorchModelHubMixin`` writes
(``config.json`` + ``model.safetensors``); a Hub model repository adds a model card (``README.md``). Loading
never runs code from the repository: only the JSON config and the safetensors weights are read.
``huggingface_hub`` (the ``[hub]`` extra) is imported only when the Hub itself is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, HubError

HUB_PREFIX = "hf-hub:"
CARD_FILE = "README.md"
PAPER_ARXIV = "2104.05704"
LIBRARY_NAME = "compact-transformers"
# What a model repository needs; anything else in it (other weights, code) is never downloaded.
HUB_FILES = ("config.json", "model.safetensors", CARD_FILE)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("the Hugging Face Hub needs huggingface_hub: pip install 'compact-transformers[hub]'") from None
    return huggingface_hub


# ---------------------------------------------------------------------------------------------- model card


@dataclass(kw_only=True)
class CardInfo:
    """What a model card says beyond the model itself; filled from a run directory by ``cct export``."""

    dataset: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"test_top1": 97.2, "val_top1": 97.5}
    recipe: dict[str, object] = field(default_factory=dict)  # the run's resolved training settings
    license: str = "apache-2.0"


def display_name(config) -> str:
    """The paper's name of a model, e.g. ``CCT-7/3x1``, ``CVT-7/4``, ``ViT-Lite-7/4``, ``Text CCT-2/2x1``."""
    from .text import TextConfig

    family, layers = config.family, config.num_layers
    if family == "cct":
        tokens = f"{config.kernel_size}x{getattr(config, 'n_conv_layers', 1)}"
    elif family == "transformer":
        tokens = "1"
    else:
        tokens = str(config.patch_size)
    label = {"cct": "CCT", "cvt": "CVT", "vit": "ViT-Lite", "vit_lite": "ViT-Lite", "transformer": "Transformer"}
    name = f"{label.get(family, family)}-{layers}/{tokens}"
    return f"Text {name}" if isinstance(config, TextConfig) else name


def model_card(model, info: CardInfo | None = None) -> str:
    """A Hub model card (``README.md``): YAML metadata (library, tags, paper, license, metrics) and a summary."""
    from .complexity import complexity
    from .text import TextConfig

    hub = _hub()
    info = info or CardInfo()
    config = model.config
    is_text = isinstance(config, TextConfig)
    name = display_name(config)
    task = "text-classification" if is_text else "image-classification"
    classes = config.extra.get("classes") or [str(i) for i in range(config.num_classes)]
    dataset = info.dataset or config.extra.get("dataset")
    eval_results = [
        hub.EvalResult(task_type=task, dataset_type=dataset or "custom", dataset_name=dataset or "custom",
                       dataset_split=split, metric_type="accuracy", metric_name=f"{split} top-1 (%)",
                       metric_value=value)
        for split, value in info.metrics.items()
    ]  # fmt: skip
    data = hub.ModelCardData(
        library_name=LIBRARY_NAME,
        license=info.license,
        pipeline_tag=task,
        tags=["compact-transformers", "cct", "text" if is_text else "vision-transformer", f"arxiv:{PAPER_ARXIV}"],
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"],
        model_name=name,
        eval_results=eval_results or None,
    )
    sizes = complexity(model)
    shape = f"{config.seq_len} tokens" if is_text else "x".join(map(str, (*config.img_size, config.in_chans)))
    lines = [
        f"# {name}",
        "",
        f"A Compact Transformer from *Escaping the Big Data Paradigm with Compact Transformers* (Hassani et al., "
        f"[arXiv:{PAPER_ARXIV}](https://arxiv.org/abs/{PAPER_ARXIV})), saved by "
        f"[compact-transformers](https://pypi.org/project/{LIBRARY_NAME}/).",
        "",
        f"- input: {shape}",
        f"- parameters: {sizes.params / 1e6:.3f}M" + (" (without the word embedding)" if is_text else ""),
        f"- MACs per sample: {sizes.macs / 1e6:.1f}M",
        f"- classes ({len(classes)}): {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}",
    ]
    if dataset:
        lines.append(f"- trained on: {dataset}")
    if info.metrics:
        lines += ["", "## Results", "", "| split | top-1 (%) |", "|---|---|"]
        lines += [f"| {split} | {value:.2f} |" for split, value in info.metrics.items()]
    if info.recipe:
        lines += ["", "## Training recipe", "", "```yaml"]
        lines += [f"{key}: {value}" for key, value in info.recipe.items() if value is not None]
        lines += ["```"]
    example = '"some text"' if is_text else "images/"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from compact_transformers import load_model",
        "",
        'model = load_model("hf-hub:ORG/NAME")  # or a local copy of this repository',
        "```",
        "",
        f"or on the command line: `cct predict hf-hub:ORG/NAME {example}`.",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- save / load


def save_pretrained(model, directory: str | os.PathLike, card: CardInfo | None = None) -> Path:
    """Write the Hub layout: ``config.json``, ``model.safetensors`` and a model card ``README.md``."""
    from ..fileio import atomic_write_text
    from .weights import save_model

    directory = Path(directory)
    text = model_card(model, card)  # first, so that a missing huggingface_hub writes nothing
    save_model(model, directory)
    atomic_write_text(directory / CARD_FILE, text)
    return directory


def split_hub_id(source: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@revision]`` -> (``org/name``, revision)."""
    repo_id = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    repo_id, _, revision = repo_id.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{source!r} is not a Hub model id: expected hf-hub:ORG/NAME (optionally @REVISION)")
    return repo_id, revision or None


def hub_snapshot(source: str) -> Path:
    """The local directory of a Hub model ``hf-hub:org/name[@revision]``: downloaded once (only its config,
    safetensors weights and card), then read from the Hugging Face cache, also offline."""
    repo_id, revision = split_hub_id(source)
    hub = _hub()
    try:
        path = hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES))
    except Exception as error:  # noqa: BLE001 - network, authentication and missing-repo errors alike
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"cannot get {repo_id} from the Hugging Face Hub and it is not in the local cache ({reason}); "
            f"offline, download it elsewhere (huggingface-cli download {repo_id}) and pass the directory instead"
        ) from None
    return Path(path)


def from_pretrained(source: str | os.PathLike, device: str = "cpu"):
    """A model from a local Hub-layout directory (or ``.safetensors`` file) or a Hub id ``hf-hub:org/name``."""
    from .weights import load_model

    return load_model(source, device=device)


def push_to_hub(directory: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload Compact Transformer") -> str:
    """Upload a Hub-layout directory (written by :func:`save_pretrained`) to ``repo_id``; returns its URL."""
    directory = Path(directory)
    missing = [name for name in HUB_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} lacks {', '.join(missing)}: write it with save_pretrained or "
                              "`cct export --format hub` first")
    repo_id, _ = split_hub_id(repo_id)
    hub = _hub()
    try:
        api = hub.HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=commit_message,
                          allow_patterns=list(HUB_FILES))
    except Exception as error:  # noqa: BLE001 - network and authentication errors alike
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HubError(f"cannot push to {repo_id} on the Hugging Face Hub ({type(error).__name__}: {reason}); "
                       "check the network and `huggingface-cli login`") from None
    return str(url)


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` methods, as Hub users know them."""

    def save_pretrained(self, directory: str | os.PathLike, card: CardInfo | None = None) -> Path:
        return save_pretrained(self, directory, card=card)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: str = "cpu"):
        model = from_pretrained(source, device=device)
        if not isinstance(model, cls):
            raise CheckpointError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            save_pretrained(self, directory)
            return push_to_hub(directory, repo_id, private=private, token=token)
