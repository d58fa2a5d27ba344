"""Hugging Face ``transformers`` integration: our models as ``PreTrainedModel``s with an image processor or a
tokenizer, registered with the Auto classes, so that ``pipeline()`` runs an exported model offline.

    import compact_transformers.integrations.transformers as cct_hf  # registers the classes below
    cct_hf.export_transformers(model, "cct-hf")   # or: cct export RUN --format hf --output cct-hf
    pipeline("image-classification", model="cct-hf")   # the same top-1 as `cct predict RUN images/`
    model = cct_hf.from_transformers("cct-hf")         # and back: one of our models, identical logits

Importing this module registers, under the model type ``compact_transformer``: ``CctConfig`` (AutoConfig),
``CctForImageClassification`` (AutoModelForImageClassification), ``CctForSequenceClassification``
(AutoModelForSequenceClassification), ``CctImageProcessor`` (AutoImageProcessor) and ``CctTokenizer``
(AutoTokenizer). The classes are this library's own code: an exported directory holds weights, JSON and a
``tokenizers`` file only, and loads without ``trust_remote_code`` (no code from a checkpoint ever runs).

Versions: transformers >= 4.46 with tokenizers >= 0.20 (the ``[hf]`` extra); tested with transformers 5.24.0
(tokenizers 0.23.3, huggingface_hub 2.4.0) and 4.46.3 (tokenizers 0.20.3, huggingface_hub 0.26.5). The code keeps
to what both major versions have, as 5.x renamed and rebuilt several base classes: ``PretrainedConfig`` (5.x:
``PreTrainedConfig``, a dataclass) subclassed with an ``__init__`` of its own, a ``BaseImageProcessor`` whose
``preprocess`` is ours (neither 5.x's ``PilBackend`` nor torchvision is needed), ``PreTrainedTokenizerFast``
(5.x: ``TokenizersBackend``) without an ``__init__``, and the ``register`` keywords that 5.x keeps as aliases.

What ``cct predict`` does and these classes reproduce:

- images: the file is converted to the model's mode (L or RGB), scaled to cover the model's size and
  centre-cropped in one bicubic resize (``data.images.decode_image``), normalised with the model's mean and std
  in float32; a model validated with test-time views (``extra["flip_tta"]``, ``extra["shift_tta"]``) averages
  the logits of the image, its mirror image and their shifted copies in eval mode as ``cct predict`` does
  (``config.flip_tta``, ``config.shift_tta``, which can be switched off). Differences remain only from
  the pipeline's own decoding of files (``transformers.image_utils.load_image``), not from the processor: it
  applies the EXIF orientation, which ``cct predict`` does not; it decodes a JPEG at full size where
  ``cct predict`` lets the decoder downscale a large one first (``Image.draft``); and it converts every image to
  RGB, which clips 16-bit images that ``cct predict`` rescales. Give the processor file paths
  (``processor(["a.jpg"])``) to decode exactly as ``cct predict`` does.
- texts: ``data.text.tokenize`` as a ``tokenizers`` pipeline (normalizer + pre-tokenizer + WordLevel over the
  run's vocabulary); texts are cut to the model's ``seq_len`` (their first tokens) unless ``truncation=False``,
  and padded on the right with ``<pad>`` when padding is asked for (``padding="max_length"`` gives exactly
  ``encode_texts``' ids). The rule is matched exactly by regular expressions, see ``_normalizer``; the one
  difference is the Unicode version: Python's ``unicodedata`` and the Oniguruma tables of ``tokenizers`` may
  classify characters that are new in one of them differently (e.g. letters that Python 3.11's Unicode 14 does
  not know yet), which would also change ``tokenize`` between Python versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import tta_logits
from ..data.images import as_8bit, decode_image
from ..data.text import PAD, SPECIALS, UNK, Vocabulary
from ..errors import CheckpointError, ConfigError
from ..models import CompactTransformer, TextCompactTransformer, build_model
from ..models.layers import init_reference_weights
from ..models.weights import config_from_dict, model_config

try:
    from PIL import Image
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BaseImageProcessor,
        PretrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerFast,
    )
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.modeling_outputs import ImageClassifierOutput, SequenceClassifierOutput
except ImportError as error:
    raise ImportError(
        f"compact_transformers.integrations.transformers needs transformers, tokenizers and Pillow "
        f"({error}); pip install 'compact-transformers[hf]'",
        name=error.name,
    ) from error

MODEL_TYPE = "compact_transformer"
BICUBIC = int(Image.Resampling.BICUBIC)  # the resize of data.images.decode_image, i.e. of `cct predict`

# ---------------------------------------------------------------------------------------------- config


class CctConfig(PretrainedConfig):
    """Our model config (``cct_config``: the dict ``save_model`` writes to config.json, ``{"kind": ..., ...}``)
    plus ``id2label``/``label2id`` from the class names in ``extra["classes"]``.

    ``flip_tta``: average the logits of each image and its mirror image in eval mode; ``shift_tta``: N > 0 also
    those of each of them shifted by N pixels (``augment.tta_views``; default of both: as the model was
    validated in training, ``extra["flip_tta"]`` and ``extra["shift_tta"]``).
    """

    model_type = MODEL_TYPE

    # PretrainedConfig.from_dict passes every saved key (id2label, transformers_version, ...) as a keyword:
    # **kwargs is the base class's interface here, not a pass-through of our own options.
    def __init__(self, cct_config: dict | None = None, flip_tta: bool | None = None, shift_tta: int | None = None,
                 **kwargs) -> None:
        cct_config = dict(cct_config or {})
        extra = cct_config.get("extra") or {}
        if cct_config and kwargs.get("id2label") is None and kwargs.get("num_labels") is None:
            kwargs["id2label"] = dict(enumerate(_class_names(cct_config)))
            kwargs["label2id"] = {name: i for i, name in kwargs["id2label"].items()}
        self.cct_config = cct_config
        self.flip_tta = bool(extra.get("flip_tta", False)) if flip_tta is None else bool(flip_tta)
        self.shift_tta = int(extra.get("shift_tta", 0)) if shift_tta is None else int(shift_tta)
        super().__init__(**kwargs)

    @property
    def kind(self) -> str:
        """Our config's "kind" as ``load_model`` reads it: "text", else "vision"."""
        return "text" if self.cct_config.get("kind") == "text" else "vision"


def _class_names(cct_config: dict) -> list[str]:
    extra = cct_config.get("extra") or {}
    num_classes = cct_config.get("num_classes", 0)
    classes = extra.get("classes") or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ConfigError(f"the model has {num_classes} classes but extra['classes'] names {len(classes)}")
    return [str(name) for name in classes]


# ----------------------------------------------------------------------------------------------- models


class CctPreTrainedModel(PreTrainedModel):
    """A ``PreTrainedModel`` holding one of our models as ``self.cct`` (state-dict keys ``cct.<our key>``)."""

    config_class = CctConfig
    base_model_prefix = "cct"
    kind = ""  # the model kind (our config's "kind") the subclass wraps

    def __init__(self, config: CctConfig) -> None:
        super().__init__(config)
        if config.kind != self.kind:
            other = {"vision": "CctForImageClassification", "text": "CctForSequenceClassification"}[config.kind]
            raise ConfigError(f"{type(self).__name__} wraps {self.kind} models, this config is a {config.kind} "
                              f"model: use {other} (or the Auto class for its task)")
        # the head follows num_labels, so that from_pretrained(..., num_labels=N) gives a model for N classes
        ours = config_from_dict({**config.cct_config, "num_classes": config.num_labels})
        self.cct = build_model(ours)
        self.post_init()

    # The signature is transformers' own, passed on whole: this override only restores a frozen word embedding,
    # whose parameter transformers 5 replaces (requires_grad=True) while loading.
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) if asked for
        if isinstance(model.cct, TextCompactTransformer):
            model.cct.embedder.embeddings.weight.requires_grad_(not model.cct.config.freeze_embedding)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        """The paper's reference initialisation, which our models give themselves when built; transformers calls
        it for weights a checkpoint lacks, such as a new head for other ``num_labels``."""
        init_reference_weights(module)


class CctForImageClassification(CctPreTrainedModel):
    """A vision Compact Transformer: ``forward(pixel_values, labels=None) -> ImageClassifierOutput``."""

    kind = "vision"
    main_input_name = "pixel_values"

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Logits (B, num_labels) of normalised images (B, C, H, W), averaged over the test-time views of
        ``config.flip_tta`` / ``config.shift_tta`` in eval mode; with ``labels`` (B,) also their mean
        cross-entropy."""
        if self.training or not (self.config.flip_tta or self.config.shift_tta):
            logits = self.cct(pixel_values)
        else:  # as cct predict
            logits = tta_logits(self.cct, pixel_values, self.config.flip_tta, self.config.shift_tta)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


class CctForSequenceClassification(CctPreTrainedModel):
    """A text Compact Transformer:
    ``forward(input_ids, attention_mask=None, labels=None) -> SequenceClassifierOutput``."""

    kind = "text"
    main_input_name = "input_ids"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Logits (B, num_labels) of right-padded token ids (B, L) with their mask (1 = a real token; default:
        ids != <pad>); with ``labels`` (B,) also their mean cross-entropy."""
        mask = None if attention_mask is None else attention_mask.bool()
        if mask is not None:
            lengths = mask.sum(dim=1)
            if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]):
                raise ConfigError("attention_mask must mark the first tokens of each row (right padding): "
                                  "tokenize with padding_side='right'")
        if input_ids.shape[1] == 0:  # empty texts: one masked <pad>, as cct predict feeds them
            input_ids = torch.full((input_ids.shape[0], 1), PAD, dtype=torch.int64, device=input_ids.device)
            mask = torch.zeros_like(input_ids, dtype=torch.bool)
        logits = self.cct(input_ids, mask)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# --------------------------------------------------------------------------------------- image processor


class CctImageProcessor(BaseImageProcessor):
    """Images -> ``pixel_values`` float32 (N, C, H, W) exactly as ``cct predict`` prepares them: converted to
    L (``num_channels`` 1) or RGB, scaled to cover ``size`` and centre-cropped in one ``resample`` resize,
    then ``(x - 255 mean) / (255 std)`` in float32.

    Accepts PIL images, uint8 arrays or tensors ((H, W), (H, W, C) or (C, H, W)), image file paths (decoded by
    ``decode_image``, as ``cct predict`` does), or a list of them.
    """

    model_input_names = ["pixel_values"]

    # ImageProcessingMixin.from_dict passes every saved key (image_processor_type, ...) as a keyword.
    def __init__(
        self,
        size: dict | None = None,
        image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5),
        image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5),
        num_channels: int = 3,
        resample: int = BICUBIC,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.size = dict(size or {"height": 32, "width": 32})
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.num_channels = int(num_channels)
        self.resample = int(resample)
        if self.num_channels not in (1, 3) or {len(self.image_mean), len(self.image_std)} != {self.num_channels}:
            raise ConfigError(f"CctImageProcessor: expected 1 or 3 channels with a mean and std each, got "
                              f"num_channels={num_channels}, image_mean={image_mean}, image_std={image_std}")

    @property
    def mode(self) -> str:
        return "L" if self.num_channels == 1 else "RGB"

    def preprocess(self, images: object, return_tensors: str | None = None) -> BatchFeature:
        """``{"pixel_values": (N, C, H, W) float32}`` of one image or a list of images."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = np.stack([self._pixels(image) for image in images]).transpose(0, 3, 1, 2)
        shift = np.array([255.0 * m for m in self.image_mean], dtype=np.float32)[:, None, None]
        scale = np.array([1.0 / (255.0 * s) for s in self.image_std], dtype=np.float32)[:, None, None]
        pixel_values = (batch.astype(np.float32) - shift) * scale  # EvalTransform's arithmetic, in float32
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _pixels(self, image: object) -> np.ndarray:
        """uint8 (H, W, C) at the model's size."""
        size = (int(self.size["height"]), int(self.size["width"]))
        if isinstance(image, (str, os.PathLike)):
            if self.resample != BICUBIC:
                raise ConfigError("CctImageProcessor: image files are decoded as cct predict does (bicubic); "
                                  f"resample={self.resample} applies to decoded images only")
            return decode_image(Path(image), size, self.mode)
        return _fit(_as_pil(image), size, self.mode, self.resample)


def _as_pil(image: object) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ConfigError(f"CctImageProcessor: expected a PIL image, a file path or a uint8 array (H, W), "
                          f"(H, W, C) or (C, H, W), got {described}")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        image = image.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image))


def _fit(image: Image.Image, size: tuple[int, int], mode: str, resample: int) -> np.ndarray:
    """``decode_image``'s geometry for an image that is already decoded: scale to cover ``size`` = (H, W) and
    centre-crop, in one resize (no resize at all when the image has the size already)."""
    image = as_8bit(image).convert(mode)
    if (image.height, image.width) != size:
        height, width = size
        scale = max(height / image.height, width / image.width)
        crop_w, crop_h = width / scale, height / scale
        left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
        image = image.resize((width, height), Image.Resampling(resample), box=(left, top, left + crop_w, top + crop_h))
    pixels = np.array(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


# ---------------------------------------------------------------------------------------------- tokenizer

# data.text.tokenize ("words-v1") as tokenizers regular expressions (Oniguruma). Python's `\s`/`\S` also count
# U+001C-U+001F as whitespace (str.isspace), Oniguruma's do not; a word character `[^\W_]` is a letter or a
# number (str.isalnum), where Oniguruma's `\w` would also take combining marks.
_SPACE = r"\s\x1c-\x1f"
_WORD = r"[\p{L}\p{N}]"
# str.lower() turns a capital sigma at the end of a word into final sigma: preceded by a cased letter (after
# skipping case-ignorable characters such as "'") and not followed by one. Python skips the case-ignorable
# characters first, so the cased letters that are also case-ignorable (modifier letters) never count. The
# context before the sigma is matched and dropped from the match with \K: Oniguruma's variable-length
# look-behind would rescan the text back to its start at every sigma that fails it (quadratic time).
_CASED = r"[\p{Cased}&&\P{Case_Ignorable}]"
_FINAL_SIGMA = rf"{_CASED}\p{{Case_Ignorable}}*\K\u03a3(?!\p{{Case_Ignorable}}*{_CASED})"


def _normalizer() -> normalizers.Normalizer:
    """tokenize's step 1: <br> variants -> space, lower-case (str.lower, final sigma included), U+2019 -> '."""
    return normalizers.Sequence([
        normalizers.Replace(Regex(rf"(?i)<br[{_SPACE}]*/?>"), " "),
        normalizers.Replace(Regex(_FINAL_SIGMA), "\u03c2"),
        normalizers.Lowercase(),
        normalizers.Replace("\u2019", "'"),
    ])  # fmt: skip


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """tokenize's steps 2-3: words (inner apostrophes kept) and single symbols, then a clitic split off the end
    of a word (the earliest one that ends it, as the shortest prefix of tokenize's lazy match)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"[{_SPACE}]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(f"{_WORD}+(?:'{_WORD}+)*|[^{_SPACE}]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"(?<=.)(?:n't|'s|'re|'ve|'ll|'d|'m)\z"), behavior="isolated"),
    ])  # fmt: skip


class CctTokenizer(PreTrainedTokenizerFast):
    """The tokenizer of a text model: ``data.text.tokenize`` + its vocabulary (``<unk>`` = 0, ``<pad>`` = 1),
    texts cut to the model's ``seq_len`` by default and padded on the right. Build one with
    :meth:`from_vocabulary` (no ``__init__`` of its own, so that transformers loads tokenizer.json as it is)."""

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary, seq_len: int) -> CctTokenizer:
        """The tokenizer of a model with vocabulary ``vocab`` and ``seq_len`` tokens per text."""
        ids = {token: i for i, token in enumerate(vocab.tokens)}
        backend = Tokenizer(WordLevel(vocab=ids, unk_token=SPECIALS[UNK]))
        backend.normalizer = _normalizer()
        backend.pre_tokenizer = _pre_tokenizer()
        # split_special_tokens: "<pad>" in a text is the tokens "<", "pad", ">" as in tokenize, never id 1
        return cls(tokenizer_object=backend, unk_token=SPECIALS[UNK], pad_token=SPECIALS[PAD], model_max_length=seq_len,
                   split_special_tokens=True)  # fmt: skip

    def _get_padding_truncation_strategies(
        self, padding=False, truncation=None, max_length=None, pad_to_multiple_of=None, verbose=True, **kwargs
    ):
        # The one hook that both transformers 4 and 5 call with the caller's settings: truncate to
        # model_max_length (the model's seq_len) unless told otherwise, as encode_texts does; a longer
        # input would be an error in the model.
        return super()._get_padding_truncation_strategies(
            padding=padding, truncation=True if truncation is None else truncation, max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of, verbose=verbose, **kwargs,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------- conversion


def to_transformers(model: nn.Module) -> CctForImageClassification | CctForSequenceClassification:
    """A transformers model computing the same logits as ``model`` (a copy of its weights, in eval mode)."""
    config = CctConfig(cct_config=_checked_config(model))
    hf_class = CctForSequenceClassification if config.kind == "text" else CctForImageClassification
    hf_model = hf_class(config)
    hf_model.cct.load_state_dict(model.state_dict(), strict=True)
    return hf_model.to(_device_of(model)).eval()


def image_processor_for(model: CompactTransformer) -> CctImageProcessor:
    """The image processor that prepares images for ``model`` as ``cct predict`` does."""
    config = model.config
    height, width = config.img_size
    return CctImageProcessor(size={"height": height, "width": width}, image_mean=list(config.mean),
                             image_std=list(config.std), num_channels=config.in_chans)  # fmt: skip


def tokenizer_for(model: TextCompactTransformer) -> CctTokenizer:
    """The tokenizer of ``model``, from the vocabulary saved in it (``config.extra["vocab"]``)."""
    vocab = model.config.extra.get("vocab")
    if vocab is None:
        raise ConfigError("this text model has no vocabulary (config.extra['vocab']); models trained by "
                          "`cct train` save theirs")
    return CctTokenizer.from_vocabulary(Vocabulary.from_dict(vocab), model.config.seq_len)


def export_transformers(model: nn.Module, output: str | os.PathLike) -> Path:
    """Write ``model`` as a transformers directory: config.json + model.safetensors + preprocessor_config.json
    (vision) or the tokenizer files (text). Returns the directory."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; the hf format writes a directory")
    preprocessor = tokenizer_for(model) if isinstance(model, TextCompactTransformer) else None
    hf_model = to_transformers(model)
    preprocessor = preprocessor or image_processor_for(model)
    hf_model.save_pretrained(output)
    preprocessor.save_pretrained(output)
    return output


def from_transformers(source: str | os.PathLike | CctPreTrainedModel) -> nn.Module:
    """One of our models from a transformers directory written by :func:`export_transformers` (or a model in
    memory), with the same weights, logits, class names (from ``id2label``) and TTA setting."""
    if isinstance(source, CctPreTrainedModel):
        hf_model = source
    else:
        path = Path(source)
        model_type = _model_type(path / "config.json")
        if model_type != MODEL_TYPE:
            raise CheckpointError(f"{path} is not a transformers directory of a {MODEL_TYPE!r} model (model_type "
                                  f"{model_type!r}): expected a directory written by export_transformers")
        config = CctConfig.from_pretrained(path, local_files_only=True)
        hf_class = CctForSequenceClassification if config.kind == "text" else CctForImageClassification
        hf_model = hf_class.from_pretrained(path, local_files_only=True)
    config = hf_model.config
    cct_config = {**config.cct_config, "num_classes": config.num_labels}
    extra = dict(cct_config.get("extra") or {})
    classes = [str(config.id2label[i]) for i in range(config.num_labels)]
    if classes != [str(i) for i in range(config.num_labels)] or "classes" in extra:
        extra["classes"] = classes
    if config.kind == "vision" and bool(extra.get("flip_tta", False)) != config.flip_tta:
        extra["flip_tta"] = config.flip_tta
    if config.kind == "vision" and int(extra.get("shift_tta", 0)) != config.shift_tta:
        extra["shift_tta"] = config.shift_tta
    model = build_model(config_from_dict({**cct_config, "extra": extra}))
    model.load_state_dict(hf_model.cct.state_dict(), strict=True)
    return model.to(_device_of(hf_model.cct)).eval()


def _model_type(config_path: Path) -> str | None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {config_path.parent}: expected a directory written by "
                              "export_transformers") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not a valid JSON config ({error})") from None
    return config.get("model_type") if isinstance(config, dict) else None


def _checked_config(model: nn.Module) -> dict:
    if not isinstance(model, (CompactTransformer, TextCompactTransformer)):
        raise ConfigError(f"expected a CompactTransformer or TextCompactTransformer, got {type(model).__name__}")
    if model.config.num_classes < 1:
        raise ConfigError("the model has no classification head (num_classes=0): nothing to export")
    return model_config(model)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- registry

AutoConfig.register(MODEL_TYPE, CctConfig, exist_ok=True)
AutoModelForImageClassification.register(CctConfig, CctForImageClassification, exist_ok=True)
AutoModelForSequenceClassification.register(CctConfig, CctForSequenceClassification, exist_ok=True)
AutoImageProcessor.register(CctConfig, slow_image_processor_class=CctImageProcessor, exist_ok=True)
AutoTokenizer.register(CctConfig, fast_tokenizer_class=CctTokenizer, exist_ok=True)
