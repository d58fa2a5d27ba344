"""Per-channel mean and std (in 0..1 pixel units) of the datasets the presets were trained on.

The one home of these constants: the presets' preprocessing metadata, the ``VisionConfig`` default and the
statistics ``load_dataset`` uses for CIFAR instead of measuring them.
"""

from __future__ import annotations

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "flowers102": ((0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698)),
}
