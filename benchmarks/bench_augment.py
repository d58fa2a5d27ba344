"""Time the batched train augmentation: our ops vs the kornia equivalents, on CPU.

    python benchmarks/bench_augment.py                # batch 128, 2 threads, 28x28x1 and 32x32x3
    python benchmarks/bench_augment.py --mallopt      # keep freed memory in the heap (fewer page faults)
    python benchmarks/bench_augment.py --no-kornia    # ours only (kornia comes with the `bench` extra)

Each row is the median (and min) over --repeats timed calls after --warmup calls. Wall-clock
time; on a shared machine compare the min column too. The kornia rows are the closest kornia
building blocks, not the same recipe: kornia's RandAugment applies one op choice to the whole
batch (magnitude m on its 0..30 scale, no magnitude noise), its RandomErasing fills a constant,
and RandomMixUpV2/RandomCutMixV2 draw per-sample lambdas against a random permutation.
kornia's RandAugment raises on 1-channel input, so its 28x28x1 rows run on the grey images
repeated to 3 channels.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from typing import Callable

import torch

from compact_transformers.augment import AugmentConfig, MixupCutmix, TrainAugment, _crop_resize_flip, _sample_crop_boxes

CASES = {  # name: (channels, size, mean, std)
    "28x28x1": (1, 28, (0.1307,), (0.3081,)),
    "32x32x3": (3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def timeit(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """(median ms, min ms) of wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def ours(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig) -> dict[str, Callable[[], object]]:
    aug = TrainAugment(cfg)
    mix = MixupCutmix(num_classes=10)
    batch, _, height, width = images.shape
    normalized = aug(images)

    def crop_flip() -> torch.Tensor:
        boxes = _sample_crop_boxes(batch, height, width, cfg.scale, cfg.ratio)
        flip = torch.rand(batch) < cfg.hflip
        return _crop_resize_flip(images, boxes, flip, cfg.image_size, cfg.interpolation)

    cropped = crop_flip().clamp_(0, 255).round_()  # RandAugment's input: uint8 values as float

    def randaugment() -> torch.Tensor:
        x = cropped.clone()
        for _ in range(aug.randaugment.num_ops):
            x = aug._randaugment_layer(x)
        return x

    return {
        "RRC + flip": crop_flip,
        "RandAugment (2 ops)": randaugment,
        "random erasing p=.25": lambda: aug._random_erase(normalized.clone()),
        "mixup/cutmix + smoothing": lambda: mix(normalized, labels),
        "full: TrainAugment + MixupCutmix": lambda: mix(aug(images), labels),
    }


def kornia_ops(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig) -> dict[str, Callable[[], object]]:
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment

    if images.shape[1] == 1:  # kornia's RandAugment (its colour op) raises on 1 channel: time grey as RGB
        images = images.expand(-1, 3, -1, -1)
        cfg = AugmentConfig(**{**cfg.__dict__, "mean": cfg.mean * 3, "std": cfg.std * 3})
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    rrc = K.RandomResizedCrop(
        cfg.image_size, scale=cfg.scale, ratio=cfg.ratio, resample=cfg.interpolation.upper(), cropping_mode="resample"
    )
    flip = K.RandomHorizontalFlip(p=cfg.hflip)
    rand_augment = RandAugment(n=2, m=27)  # 9/10 of kornia's 0..30 scale
    normalize = K.Normalize(mean=mean, std=std)
    erase = K.RandomErasing(p=cfg.reprob)
    mixup, cutmix = K.RandomMixUpV2(data_keys=["input", "class"]), K.RandomCutMixV2(data_keys=["input", "class"])
    floats = images.float() / 255
    normalized = normalize(floats)

    def mix() -> object:
        op = cutmix if torch.rand(()) < 0.5 else mixup
        return op(normalized, labels)

    def full() -> object:
        x = normalize(rand_augment(flip(rrc(images.float() / 255))))
        return (cutmix if torch.rand(()) < 0.5 else mixup)(erase(x), labels)

    return {
        "RRC + flip": lambda: flip(rrc(floats)),
        "RandAugment (2 ops)": lambda: rand_augment(floats),
        "random erasing p=.25": lambda: erase(normalized),
        "mixup/cutmix + smoothing": mix,
        "full: TrainAugment + MixupCutmix": full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--interpolation", default="bicubic", choices=["bilinear", "bicubic"])
    parser.add_argument("--no-kornia", action="store_true", help="time our ops only")
    parser.add_argument("--mallopt", action="store_true", help="glibc: never return freed memory to the OS")
    args = parser.parse_args()

    if args.mallopt:  # M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (glibc only)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)
        libc.mallopt(-3, 1 << 30)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.interpolation}, median / min of {args.repeats} after {args.warmup} warm-up calls (ms)")
    for name, (channels, size, mean, std) in CASES.items():
        cfg = AugmentConfig(image_size=(size, size), mean=mean, std=std, reprob=0.25, interpolation=args.interpolation)
        images = torch.randint(0, 256, (args.batch, channels, size, size), dtype=torch.uint8)
        labels = torch.randint(0, 10, (args.batch,))
        rows = {key: [timeit(fn, args.warmup, args.repeats)] for key, fn in ours(images, labels, cfg).items()}
        if not args.no_kornia:
            for key, fn in kornia_ops(images, labels, cfg).items():
                rows[key].append(timeit(fn, args.warmup, args.repeats))
        print(f"\n{name}")
        print(f"{'':34s} {'ours med/min':>16s} {'kornia med/min':>18s}")
        for key, results in rows.items():
            cells = [f"{med:7.2f} /{mn:6.2f}" for med, mn in results]
            print(f"{key:34s} {cells[0]:>16s} {cells[1] if len(cells) > 1 else '':>18s}")


if __name__ == "__main__":
    main()
