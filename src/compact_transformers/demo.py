"""``cct demo``: a local web page to try a trained model. Drop images (or type texts) and see the top-k and
where the model looked (the heat map of its token weights, see ``explain.py``), beside the model's card.

Gradio (``pip install 'compact-transformers[demo]'``) serves the page: the model is loaded once, and requests
that arrive together are run as one batch (Gradio's queue with ``batch=True``). The server binds to 127.0.0.1
unless told otherwise, uploads are capped in bytes and images in pixels, and a file that is not an image gets a
message on the page. Gradio's analytics are off and the page loads nothing from outside the server.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError

MAX_FILES = 32  # images per request; more are left out with a note
MAX_TEXT_LINES = 64  # texts per request
MAX_TEXT_CHARS = 100_000


class DemoError(UserError):
    """``cct demo`` cannot start: one line, exit code 2."""


@dataclass
class ImageResult:
    """One uploaded file: its top-k and heat map, or why it was not classified."""

    name: str
    predictions: list[dict] = field(default_factory=list)
    picture: object = None  # PIL image: the heat map over the image, the top-k below it
    error: str | None = None


class Predictor:
    """A model loaded once, with ``cct predict``'s preprocessing (decode, centre crop, normalise, the mirror and
    shifted test-time views the model was validated with, mixed precision), so that its answers are
    ``cct predict``'s."""

    def __init__(self, source: str, device: str = "auto", top_k: int = 5, fp32: bool = False,
                 no_flip_tta: bool = False, no_shift_tta: bool = False, max_image_side: int = 4096,
                 batch_size: int = 64) -> None:
        from .augment import EvalTransform
        from .cli import _load_for_inference, _tta
        from .models import TextConfig
        from .training.runtime import autocast_dtype, prepare_model, select_device

        model, self.run_dir = _load_for_inference(source)
        self.source = source
        self.config = model.config
        self.is_text = "vocab" in self.config.extra
        if isinstance(self.config, TextConfig) and not self.is_text:
            raise DemoError(f"{source} is a text model without a vocabulary: use a model saved by `cct train`")
        self.device = select_device(device)
        self.model = prepare_model(model, self.device).eval()
        self.amp = autocast_dtype(self.device, not fp32)
        self.classes = self.config.extra.get("classes") or [str(i) for i in range(self.config.num_classes)]
        self.top_k, self.max_image_side, self.batch_size = top_k, max_image_side, batch_size
        if not self.is_text:
            self.transform = EvalTransform.for_model(self.config)
            self.flip_tta, self.shift_tta = _tta(self.config, argparse.Namespace(no_flip_tta=no_flip_tta,
                                                                                 no_shift_tta=no_shift_tta))
            self.mode = "L" if self.config.in_chans == 1 else "RGB"

    # ------------------------------------------------------------------------------------------- images

    def classify_images(self, paths: list[str | Path]) -> list[ImageResult]:
        """Top-k and heat map of each file, in one forward pass per ``batch_size`` images; a file that is not
        a readable image of at most ``max_image_side`` pixels a side gets an error message instead."""
        from .cli import _top_k
        from .explain import explain_image, tta_logits_and_weights
        from .training.runtime import prepare_input

        results = [ImageResult(name=Path(path).name) for path in paths]
        readable: list[int] = []
        images: list[torch.Tensor] = []
        for index, path in enumerate(paths):
            array = self._decode(Path(path), results[index])
            if array is not None:
                tensor = torch.from_numpy(array)
                images.append(tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1))
                readable.append(index)
        for start in range(0, len(images), self.batch_size):
            batch = prepare_input(self.transform(torch.stack(images[start : start + self.batch_size]).to(self.device)))
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits, weights = tta_logits_and_weights(self.model, batch, self.flip_tta, self.shift_tta)
            top = _top_k(logits.softmax(dim=1), self.classes, self.top_k)
            for offset, predictions in enumerate(top):
                index = readable[start + offset]
                results[index].predictions = predictions
                results[index].picture = explain_image(paths[index], self.config.img_size, weights[offset])
        return results

    def _decode(self, path: Path, result: ImageResult):
        """The image as the model reads it (uint8 H x W x C), or None with ``result.error`` saying why not."""
        from PIL import Image, UnidentifiedImageError

        from .data.images import decode_image

        try:
            with Image.open(path) as image:
                width, height = image.size
        except UnidentifiedImageError:
            result.error = "not an image: its content is in no image format that Pillow reads"
            return None
        except Image.DecompressionBombError:
            result.error = f"image too large (at most {self.max_image_side} pixels a side)"
            return None
        except OSError as error:
            result.error = f"cannot read this file: {error}"
            return None
        if max(width, height) > self.max_image_side:
            result.error = f"image too large: {width}x{height} pixels (at most {self.max_image_side} a side)"
            return None
        try:
            return decode_image(path, self.config.img_size, self.mode)
        except Exception as error:  # noqa: BLE001 - a truncated or corrupt file: say so on the page
            result.error = f"cannot decode this image: {error}"
            return None

    # -------------------------------------------------------------------------------------------- texts

    def classify_texts(self, texts: list[str]) -> list[tuple]:
        """(explanation, top-k) of each text (``explain.TextExplanation``: its words and their weights)."""
        from .cli import _top_k
        from .data.text import Vocabulary
        from .explain import explain_texts

        if not texts:
            return []
        explanations = explain_texts(self.model, texts, Vocabulary.from_dict(self.config.extra["vocab"]),
                                     batch_size=self.batch_size, autocast=self.amp)
        logits = torch.stack([explanation.logits for explanation in explanations])
        return list(zip(explanations, _top_k(logits.softmax(dim=1), self.classes, self.top_k)))

    # --------------------------------------------------------------------------------------------- card

    def card_markdown(self) -> str:
        """The model's card: name, size, cost, dataset, validation accuracy (from the run), classes."""
        from .cli import _card_info
        from .models import complexity
        from .models.hub import display_name

        config = self.config
        sizes = complexity(self.model)
        info = _card_info(self.run_dir)
        dataset = (info.dataset if info else None) or config.extra.get("dataset")
        metrics = info.metrics if info else _hub_card_metrics(self.run_dir)
        shape = (f"up to {config.seq_len} words" if self.is_text
                 else "×".join(map(str, (*config.img_size, config.in_chans))))
        params = f"{sizes.params / 1e6:.3f}M" + (" (without the word embedding)" if self.is_text else "")
        what = "per text" if self.is_text else "per image"
        facts = [f"parameters **{params}**", f"MACs **{sizes.macs / 1e6:.1f}M** {what}", f"input {shape}",
                 f"dataset **{_escape(dataset or 'unknown')}**"]
        facts += [f"{split} top-1 **{value:.2f}%**" for split, value in metrics.items()]
        if not self.is_text and (self.flip_tta or self.shift_tta):
            views = ["mirror-image"] * self.flip_tta + [f"±{self.shift_tta} px shifted"] * bool(self.shift_tta)
            facts.append(" and ".join(views) + " TTA")
        shown = ", ".join(_escape(name) for name in self.classes[:50])
        more = f", … ({len(self.classes) - 50} more)" if len(self.classes) > 50 else ""
        looked = ("SeqPool's weight of each token" if config.family in ("cct", "cvt")
                  else "the class token's last-layer attention to each token")
        looked += ", spread over the words" if self.is_text else ", upsampled to the image"
        source = self.source.replace("`", "'")  # shown in a code span, where Markdown escapes nothing else
        return (f"## {_escape(display_name(config))} · `{source}`\n\n" + " · ".join(facts) + "\n\n"
                f"**classes ({len(self.classes)})**: {shown}{more}\n\n"
                f"The heat map shows where the model looked: {looked}.")


def _hub_card_metrics(directory: Path | None) -> dict[str, float]:
    """The top-1 results in a Hub-layout directory's model card (README.md), if it has them."""
    card = None if directory is None else Path(directory) / "README.md"
    if card is None or not card.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        results = ModelCard.load(card).data.eval_results or []
    except Exception:  # noqa: BLE001 - a card without results (or an unreadable one) just shows none
        return {}
    return {str(result.dataset_split or "eval"): float(result.metric_value) for result in results}


def _escape(text: str) -> str:
    """Text safe inside Markdown (names come from the model's files)."""
    return html.escape(str(text)).replace("*", "\\*").replace("_", "\\_").replace("`", "\\`")


# ---------------------------------------------------------------------------------------------- the page


def images_html(results: list[ImageResult], left_out: int = 0) -> str:
    """The results of one request: per file its top-k (top-1 also in ``data-top1``) or its error."""
    from .explain import predictions_html

    blocks = []
    for result in results:
        name = html.escape(result.name)
        if result.error is not None:
            blocks.append(f'<div class="cct-error" data-file="{name}" style="color:#b91c1c;margin:0 0 10px 0">'
                          f"<b>{name}</b>: {html.escape(result.error)}</div>")
        else:
            top1 = html.escape(str(result.predictions[0]["label"]))
            blocks.append(f'<div class="cct-result" data-file="{name}" data-top1="{top1}" style="margin:0 0 10px 0">'
                          f"<b>{name}</b>{predictions_html(result.predictions)}</div>")
    if left_out:
        blocks.append(f'<div class="cct-error">{left_out} more file(s) left out: at most {MAX_FILES} per upload</div>')
    return "".join(blocks)


def build_app(predictor: Predictor, max_batch_size: int = 16):
    """The Gradio Blocks of the page: the model card, then an image drop zone or a text box, and the results."""
    gr = import_gradio()
    from .explain import text_block_html

    def classify_images(requests: list[list[str] | None]) -> tuple[list[str], list[list]]:
        """Gradio batch function: a list of requests (each a list of uploaded files) -> one forward pass."""
        kept = [list(files or [])[:MAX_FILES] for files in requests]
        results = iter(predictor.classify_images([path for files in kept for path in files]))
        pages, galleries = [], []
        for files, request in zip(kept, requests):
            mine = [next(results) for _ in files]
            pages.append(images_html(mine, left_out=len(request or []) - len(files)))
            galleries.append([(r.picture, f"{r.name}: {r.predictions[0]['label']}") for r in mine if r.picture])
        return pages, galleries

    def classify_texts(requests: list[str | None]) -> tuple[list[str]]:
        """Gradio batch function: a list of requests (each texts, one per line) -> one forward pass."""
        kept = [[line for line in (text or "")[:MAX_TEXT_CHARS].splitlines() if line.strip()][:MAX_TEXT_LINES]
                for text in requests]
        results = iter(predictor.classify_texts([line for lines in kept for line in lines]))
        pages = []
        for lines in kept:
            blocks = []
            for line in lines:
                explanation, predictions = next(results)
                blocks.append(text_block_html(line, explanation, predictions))
            pages.append("".join(blocks) or '<div class="cct-error">type a text to classify</div>')
        return (pages,)

    with gr.Blocks(title=f"cct demo: {predictor.source}", analytics_enabled=False) as app:
        gr.Markdown(predictor.card_markdown(), elem_id="cct-card")
        if predictor.is_text:
            text = gr.Textbox(lines=4, label="Texts, one per line", elem_id="cct-text")
            button = gr.Button("Classify", variant="primary", elem_id="cct-classify")
            results = gr.HTML(elem_id="cct-results")
            for event in (button.click, text.submit):
                event(classify_texts, inputs=text, outputs=results, batch=True, max_batch_size=max_batch_size)
        else:
            files = gr.File(file_count="multiple", file_types=["image"], elem_id="cct-images",
                            label=f"Images: drop them here or click to choose (up to {MAX_FILES} at once)")
            with gr.Row():
                results = gr.HTML(elem_id="cct-results")
                gallery = gr.Gallery(label="Where the model looked", columns=3, object_fit="contain",
                                     elem_id="cct-heatmaps")
            files.upload(classify_images, inputs=files, outputs=[results, gallery], batch=True,
                         max_batch_size=max_batch_size)
    return app


def import_gradio():
    """Gradio, with its analytics off (set before the import, which reads it), or a one-line error naming
    the extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise DemoError("cct demo needs Gradio: pip install 'compact-transformers[demo]'") from None
    return gradio


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int | None = None, max_upload_mb: float = 10.0,
          max_batch_size: int = 16) -> None:
    """Build the page and serve it until Ctrl-C or SIGTERM."""
    app = build_app(predictor, max_batch_size=max_batch_size)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to the page it starts
    _, url, _ = app.queue(max_size=256).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
        max_file_size=int(max_upload_mb * 1024 * 1024), footer_links=["gradio", "settings"], ssr_mode=False, pwa=False,
        mcp_server=False, enable_monitoring=False, quiet=True, prevent_thread_lock=True,
    )  # fmt: skip
    print(f"serving {predictor.source} on {url} (Ctrl-C stops it)", flush=True)
    try:
        while app.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the cct command raises the same for it)
        print("stopping the demo", flush=True)
    finally:
        app.close()


def run_demo(args: argparse.Namespace) -> int:
    """``cct demo``: load the model once, then serve the page."""
    import_gradio()  # before loading the model: a missing extra is said at once
    if not args.max_upload_mb > 0:
        raise DemoError(f"--max-upload-mb must be a positive number of megabytes, got {args.max_upload_mb}")
    predictor = Predictor(args.model, device=args.device, top_k=args.top_k, fp32=args.fp32,
                          no_flip_tta=args.no_flip_tta, no_shift_tta=args.no_shift_tta,
                          max_image_side=args.max_image_side, batch_size=args.batch_size)
    serve(predictor, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_batch_size=args.max_batch_size)
    return 0
