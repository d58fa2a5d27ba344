"""Experiment tracking besides ``metrics.jsonl``: ``--log tensorboard`` writes TensorBoard event files to
``RUN/tensorboard/``.

Every number of an epoch's metrics record becomes a scalar at step = the epoch (1-based, as in metrics.jsonl
and curves.png), and at the end of the run the curves and confusion-matrix PNGs become images. The loop talks
to one `Tracker`: ``start`` once the run directory exists (rank 0 only), ``log_epoch`` after each epoch,
``log_figures`` at the end, ``close`` always; the base class records nothing.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .recipe import TRACKERS

TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl keys -> TensorBoard tags, grouped in sections; a key not listed is logged under its own name
SCALAR_TAGS = {
    "train_loss": "train/loss", "train_top1": "train/top1", "lr": "train/lr",
    "val_loss": "val/loss", "val_top1": "val/top1", "val_top5": "val/top5", "val_top1_ema": "val/top1_ema",
    "img_per_s": "speed/img_per_s", "seq_per_s": "speed/seq_per_s", "epoch_seconds": "speed/epoch_seconds",
}  # fmt: skip


class Tracker:
    """Receives a run's epoch records and final figures; this base records nothing (no ``--log``)."""

    def start(self, run_dir: Path, epochs_done: int) -> None:
        """Begin writing into ``run_dir``, whose first ``epochs_done`` epochs were logged by an earlier part
        of the run (a resume)."""

    def log_epoch(self, record: dict) -> None:
        """One epoch's metrics record, as appended to metrics.jsonl."""

    def log_figures(self, figures: dict[str, Path], epoch: int) -> None:
        """PNG files by tag (training curves, confusion matrices), at the run's last ``epoch``."""

    def close(self) -> None:
        """Write out everything; safe to call more than once, and before `start`."""


class TensorBoardTracker(Tracker):
    """Scalars and images in TensorBoard event files under ``RUN/tensorboard/``."""

    def __init__(self) -> None:
        self._summary_writer = _summary_writer_class()  # a missing library fails here, before the run starts
        self.writer = None

    def start(self, run_dir: Path, epochs_done: int) -> None:
        # a resume logs from epoch epochs_done + 1 on; purge_step hides from TensorBoard whatever an earlier part
        # of the run wrote from there on, should it have got further than its checkpoint
        self.writer = self._summary_writer(log_dir=str(run_dir / TENSORBOARD_DIR),
                                           purge_step=epochs_done + 1 if epochs_done else None)  # fmt: skip

    def log_epoch(self, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(SCALAR_TAGS.get(key, key), value, global_step=record["epoch"])
        self.writer.flush()  # a run killed later keeps its curves so far

    def log_figures(self, figures: dict[str, Path], epoch: int) -> None:
        import numpy as np
        from PIL import Image

        for tag, path in figures.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(tag, pixels, global_step=epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def create_tracker(log: str | None) -> Tracker:
    """The tracker that ``TrainConfig.log`` names (one that records nothing for None); a missing library
    raises ConfigError naming the extra to install."""
    if log is None:
        return Tracker()
    if log == "tensorboard":
        return TensorBoardTracker()
    raise ConfigError(f"log must be one of {', '.join(TRACKERS)} or none, got {log!r}")


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--log tensorboard needs the tensorboard package: "
                          "pip install 'compact-transformers[log]'") from None  # fmt: skip
    return SummaryWriter
