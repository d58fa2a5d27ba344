"""Where a model looked: its token weights (SeqPool's, or the class token's last-layer attention; see
``CompactTransformer.forward_with_token_weights``) drawn as a heat map over an image or as coloured words.

``cct predict --explain DIR`` writes these pictures with :class:`ExplanationWriter`; ``cct demo`` shows them.
Imports models and data only; Pillow draws.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import tta_views, view_outputs
from .data.images import decode_image
from .data.text import Vocabulary, encode_texts, tokenize
from .fileio import atomic_write_text

# Anchors of a dark-to-bright colour scale (black, purple, red, orange, pale yellow): low weight -> dark.
HEAT_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
DISPLAY_MIN_SIDE = 224  # heat maps of a 28x28 model are drawn over the image scaled up to at least this


def tta_logits_and_weights(
    model: torch.nn.Module, batch: torch.Tensor, flip_tta: bool, shift_tta: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits (B, K) and token weights (B, H', W') of a prepared batch of images, from the test-time
    views (``augment.tta_views``; a small batch's views in one pass, ``augment.view_outputs``), averaged with
    the views' weights as ``augment.tta_logits`` averages the logits; a mirrored view's map is mirrored back, a
    shifted view's map is taken as it is (the shift is a pixel or two, under a token)."""
    views = tta_views(batch, flip=flip_tta, shift=shift_tta)
    logits = weights = None
    for view, (view_logits, view_weights) in zip(views, view_outputs(model.forward_with_token_weights, views,
                                                                     len(batch))):
        view_weights = view_weights.flip(-1) if view.mirrored else view_weights
        if logits is None:
            logits, weights = view.weight * view_logits.float(), view.weight * view_weights
        else:
            logits, weights = logits + view.weight * view_logits.float(), weights + view.weight * view_weights
    return logits, weights


def display_size(img_size: tuple[int, int], min_side: int = DISPLAY_MIN_SIDE) -> tuple[int, int]:
    """The model's input size times the smallest whole factor that makes its short side at least ``min_side``:
    decoded at this size an image shows the same centre crop the model saw, only sharper."""
    factor = max(1, math.ceil(min_side / min(img_size)))
    return img_size[0] * factor, img_size[1] * factor


def heat_map(weights: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A token grid (H', W') upsampled bilinearly to ``size`` (H, W) and scaled so that its maximum is 1."""
    upsampled = F.interpolate(weights.detach().float().cpu()[None, None], size=size, mode="bilinear",
                              align_corners=False)[0, 0]
    return (upsampled / upsampled.max().clamp_min(1e-12)).clamp_(0, 1).numpy()


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (..., 3) on :data:`HEAT_COLOURS`."""
    anchors = np.linspace(0.0, 1.0, len(HEAT_COLOURS))
    channels = [np.interp(values, anchors, HEAT_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: np.ndarray, weights: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """uint8 image (H, W, C) blended with the heat map of ``weights`` (H', W') -> uint8 RGB (H, W, 3)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    colours = colourise(heat_map(weights, image.shape[:2])).astype(np.float32)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * colours).round().astype(np.uint8)


def explain_image(path: str | Path, img_size: tuple[int, int], weights: torch.Tensor,
                  predictions: list[dict] | None = None):
    """A PIL image: the file as the model saw it (its centre crop, at :func:`display_size`) with the heat map
    of ``weights`` over it, and the top-k ``predictions`` (if given) below it."""
    from PIL import Image, ImageDraw

    picture = overlay(_model_view(Path(path), display_size(img_size)), weights)
    if not predictions:
        return Image.fromarray(picture)
    font = _font(14)
    line_height = 18
    height, width = picture.shape[:2]
    canvas = Image.new("RGB", (width, height + 8 + line_height * len(predictions)), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, prediction in enumerate(predictions):
        text = f"{prediction['label']}  {100 * prediction['probability']:.1f}%"
        draw.text((6, height + 4 + row * line_height), text, fill="black", font=font)
    return canvas


def _model_view(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The centre crop of the file that the model reads (``decode_image``'s geometry), resized to ``size``,
    as uint8 RGB. The crop box is clamped to the image: computed in floats, it can come out a hair outside
    when a small image is enlarged by a factor that is not whole, which Pillow refuses."""
    from PIL import Image

    full = Image.fromarray(decode_image(path, None, "RGB"))
    height, width = size
    scale = max(height / full.height, width / full.width)
    crop_w, crop_h = min(width / scale, full.width), min(height / scale, full.height)
    left, top = (full.width - crop_w) / 2, (full.height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    return np.asarray(full.resize((width, height), Image.Resampling.BICUBIC, box=box))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


# ------------------------------------------------------------------------------------------------ text


@dataclass
class TextExplanation:
    """One text: its tokens, how many of them the model read (``seq_len`` cuts the rest), each read token's
    weight (they sum to at most 1), and the model's logits."""

    tokens: list[str]
    read: int
    word_weights: list[float]
    logits: torch.Tensor


def explain_texts(model: torch.nn.Module, texts: list[str], vocab: Vocabulary, batch_size: int = 64,
                  autocast: torch.dtype | None = None) -> list[TextExplanation]:
    """Logits and word weights of ``texts`` for a text model (in eval mode, on its device)."""
    device = next(model.parameters()).device
    ids, lengths = encode_texts(texts, vocab, model.config.seq_len)
    explanations = []
    for start in range(0, len(texts), batch_size):
        chunk_lengths = lengths[start : start + batch_size]
        longest = max(int(chunk_lengths.max()), 1)
        rows = ids[start : start + batch_size, :longest].to(device)
        mask = torch.arange(longest)[None, :] < chunk_lengths[:, None]
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits, weights = model.forward_with_token_weights(rows, mask.to(device))
        for row, text in enumerate(texts[start : start + batch_size]):
            read = int(chunk_lengths[row])
            explanations.append(TextExplanation(
                tokens=tokenize(text), read=read, word_weights=model.word_weights(weights[row], read).tolist(),
                logits=logits[row].float().cpu(),
            ))  # fmt: skip
    return explanations


def words_html(tokens: list[str], read: int, word_weights: list[float]) -> str:
    """The tokens as HTML spans, each read one shaded by its weight (relative to the largest) and titled with
    it; tokens past the model's ``seq_len`` greyed out."""
    top = max(word_weights, default=0.0) or 1.0
    spans = []
    for index, token in enumerate(tokens):
        word = html.escape(token)
        if index >= read:
            spans.append(f'<span class="cct-unread" title="not read: past the model\'s seq_len" '
                         f'style="color:#999">{word}</span>')
            continue
        weight = word_weights[index]
        spans.append(f'<span class="cct-word" data-weight="{weight:.6f}" title="weight {weight:.4f}" '
                     f'style="background:rgba(249,115,22,{weight / top:.3f});padding:1px 2px;border-radius:3px">'
                     f"{word}</span>")
    return " ".join(spans)


def predictions_html(predictions: list[dict]) -> str:
    """The top-k as a small list of labels with probability bars."""
    rows = []
    for prediction in predictions:
        percent = 100 * prediction["probability"]
        rows.append(
            f'<div class="cct-prediction" style="display:flex;gap:8px;align-items:center">'
            f'<span style="min-width:9em">{html.escape(str(prediction["label"]))}</span>'
            f'<span style="display:inline-block;width:{max(percent, 0.5):.1f}px;max-width:100px;height:10px;'
            f'background:#f97316"></span><span>{percent:.1f}%</span></div>'
        )
    return "".join(rows)


def text_block_html(text: str, explanation: TextExplanation, predictions: list[dict]) -> str:
    """One text's result: the top-1 in its data attributes, its coloured words and its top-k."""
    top1 = html.escape(str(predictions[0]["label"])) if predictions else ""
    return (f'<div class="cct-result" data-text="{html.escape(text)}" data-top1="{top1}" '
            f'style="margin:0 0 14px 0;line-height:1.9">'
            f'<div>{words_html(explanation.tokens, explanation.read, explanation.word_weights)}</div>'
            f"{predictions_html(predictions)}</div>")


def html_page(title: str, body: str) -> str:
    """A standalone HTML page (no external resources)."""
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body style="font-family:sans-serif;max-width:60em;margin:2em auto">'
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


# --------------------------------------------------------------------------------------- cct predict --explain


class ExplanationWriter:
    """``cct predict --explain DIR``: a PNG per image (the heat map over it, the top-k below it) or one
    ``texts.html`` for all texts, and ``explanations.json`` with each input's top-k and token weights."""

    def __init__(self, directory: str | Path, model_name: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.records: list[dict] = []
        self.text_blocks: list[str] = []
        self._names: set[str] = set()

    def add_image(self, path: Path, img_size: tuple[int, int], weights: torch.Tensor, predictions: list[dict]) -> Path:
        """Draw and save one image's explanation; returns the PNG's path."""
        name = self._unique_name(Path(path).stem)
        target = self.directory / f"{name}.png"
        explain_image(path, img_size, weights, predictions).save(target)
        self.records.append({"file": str(path), "heat_map": target.name, "predictions": predictions,
                             "token_weights": _rounded(weights.tolist())})
        return target

    def add_text(self, text: str, explanation: TextExplanation, predictions: list[dict]) -> None:
        self.text_blocks.append(text_block_html(text, explanation, predictions))
        self.records.append({"text": text, "tokens": explanation.tokens[: explanation.read],
                             "word_weights": _rounded(explanation.word_weights), "predictions": predictions})

    def close(self) -> Path:
        """Write ``explanations.json`` (and ``texts.html``); returns the folder."""
        if self.text_blocks:
            atomic_write_text(self.directory / "texts.html",
                              html_page(f"{self.model_name}: where the model looked", "\n".join(self.text_blocks)))
        atomic_write_text(self.directory / "explanations.json",
                          json.dumps({"model": self.model_name, "explanations": self.records}, indent=1))
        return self.directory

    def _unique_name(self, stem: str) -> str:
        name, number = stem, 1
        while name in self._names:
            number += 1
            name = f"{stem}-{number}"
        self._names.add(name)
        return name


def _rounded(values: list) -> list:
    return [_rounded(value) if isinstance(value, list) else round(value, 6) for value in values]
