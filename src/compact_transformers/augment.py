"""Batched on-device training augmentation: the timm-style recipe of the CCT paper.

A training step takes a uint8 batch (B, C, H, W) that already lives on the training device and
turns it into a normalized float batch, with fresh random parameters for every sample:

    RandomResizedCrop + horizontal flip  -> one separable resampling (two batched matmuls)
    random translation (optional)         -> reflect padding + one gather of per-sample windows
    RandAugment "rand-m9-mstd0.5-inc1"  -> per-sample ops, grouped by op kind; every pointwise op
                                           is a per-sample 256-entry lookup table
    normalize, random erasing ("pixel")
    MixupCutmix (per batch) + label smoothing -> soft targets

Text batches (token ids with a padding mask) get WordDropout and TextCutMix (the opening of each text joined to
another's, the targets mixed by their share of the tokens).

Every random number that decides *what* happens comes from torch's global CPU generator, so
restoring `torch.get_rng_state()` replays the same augmentation. The only tensors drawn on the
input's device are the random-erasing noise pixels (the CUDA generator on a GPU).

RandAugment follows PIL semantics (uint8 values after every op, fill colour = dataset mean for
geometric ops, SMOOTH kernel for sharpness, PIL's autocontrast/equalize tables); the tests check
each op against PIL to within 1 grey level. Geometric ops use grid_sample, so with "bicubic" they
use torch's cubic (a = -0.75) where PIL uses a = -0.5; the crop resize matches PIL (a = -0.5). kornia is not
used: its RandAugment applies the same ops to the whole batch, its erasing fills a constant and
its mixup draws lambdas per sample (see benchmarks/bench_augment.py for timings).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .models.config import as_size_pair

# -----------------------------------------------------------------------------
# RandAugment spec string ("rand-m9-n2-mstd0.5-inc1", parts after "rand" in any order)

_RA_FORMAT = "'rand-m{M}-n{N}-mstd{S}-inc{0|1}' (parts after 'rand' in any order, e.g. 'rand-m9-mstd0.5-inc1')"


@dataclass(frozen=True)
class RandAugmentSpec:
    """Parsed RandAugment settings (timm semantics)."""

    num_ops: int = 2  # ops applied per image, drawn with replacement
    magnitude: float = 9.0  # on a 0..10 scale
    magnitude_std: float = 0.0  # gaussian noise on the magnitude per application (inf = uniform 0..M)
    magnitude_max: float = 10.0
    increasing: bool = False  # use the "severity increases with magnitude" op variants
    prob: float = 0.5  # each drawn op is applied with this probability


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small tensor made on the host (sample indices, boxes, per-sample arguments) on ``device``, without
    waiting for the device: a plain copy to a GPU first waits for every kernel already queued, which in a
    training step leaves the GPU idle while the host launches the next ones. Pinned, the copy is queued."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse a timm RandAugment string such as ``"rand-m9-mstd0.5-inc1"``."""
    if not isinstance(spec, str):
        raise TypeError(f"randaugment must be a string like {_RA_FORMAT}, got {type(spec).__name__}")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise ConfigError(f"malformed randaugment string {spec!r}: expected {_RA_FORMAT}")
    values = {}
    for part in parts[1:]:
        # longer keys first so that "mstd"/"mmax" are not read as "m"
        key = next((k for k in ("mstd", "mmax", "inc", "m", "n", "p") if part.startswith(k)), None)
        if key is None or key in values:
            raise ConfigError(f"malformed randaugment string {spec!r} at {part!r}: expected {_RA_FORMAT}")
        text = part[len(key):]
        try:
            values[key] = float(text)
        except ValueError:
            raise ConfigError(f"malformed randaugment string {spec!r} at {part!r}: expected {_RA_FORMAT}") from None
    result = RandAugmentSpec(
        num_ops=int(values.get("n", 2)),
        magnitude=values.get("m", 9.0),
        magnitude_std=values.get("mstd", 0.0),
        magnitude_max=values.get("mmax", 10.0),
        increasing=bool(values.get("inc", 0.0)),
        prob=values.get("p", 0.5),
    )
    if values.get("n", 2) != result.num_ops or result.num_ops < 0 or values.get("inc", 0.0) not in (0.0, 1.0):
        raise ConfigError(
            f"malformed randaugment string {spec!r}: n must be an integer >= 0 and inc 0 or 1; expected {_RA_FORMAT}"
        )
    if not (result.magnitude >= 0 and result.magnitude_std >= 0 and result.magnitude_max > 0 and 0 <= result.prob <= 1):
        raise ConfigError(f"randaugment string {spec!r}: need m >= 0, mstd >= 0, mmax > 0 and 0 <= p <= 1")
    return result


# -----------------------------------------------------------------------------
# config


@dataclass
class AugmentConfig:
    """Training/eval augmentation settings. Sizes are (height, width); mean/std in 0..1 units."""

    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, float] = (0.8, 1.0)  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect ratio w/h
    hflip: float = 0.5
    translate: int = 0  # random shift of up to this many pixels per axis, reflect-padded
    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.0  # random erasing probability
    interpolation: str = "bilinear"  # "bilinear", "bicubic" or "nearest"

    def __post_init__(self) -> None:
        size = as_size_pair(self.image_size)
        if size is None or min(size) < 1:
            raise ConfigError(f"image_size must be (height, width) of positive ints, got {self.image_size!r}")
        self.image_size = size
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(self.mean) == 0 or len(self.mean) != len(self.std):
            raise ConfigError(f"mean and std must have one value per channel, got mean={self.mean} std={self.std}")
        if min(self.std) <= 0:
            raise ConfigError(f"std values must be > 0, got {self.std}")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ConfigError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.scale}")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {self.ratio}")
        for name in ("hflip", "reprob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if isinstance(self.translate, bool) or not (
            isinstance(self.translate, int) and 0 <= self.translate < min(self.image_size)
        ):
            raise ConfigError(f"translate must be whole pixels in [0, {min(self.image_size)}), got {self.translate!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ConfigError(f"interpolation must be 'bilinear', 'bicubic' or 'nearest', got {self.interpolation!r}")
        if self.randaugment is not None:
            parse_randaugment(self.randaugment)  # fail early on a malformed string


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_images(images: torch.Tensor, channels: int) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = _describe(images)
        raise ValueError(f"expected a uint8 image batch (B, C, H, W), got {got}")
    if images.shape[1] != channels:
        raise ValueError(f"images have {images.shape[1]} channels but mean/std have {channels} values")


class _Normalize:
    """(x - 255*mean) / (255*std) for x in 0..255, constants cached per device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._cache:
            shift = torch.tensor([255.0 * m for m in self.mean], device=x.device).view(1, -1, 1, 1)
            scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device).view(1, -1, 1, 1)
            self._cache[x.device] = (shift, scale)
        shift, scale = self._cache[x.device]
        return (x - shift).mul_(scale)


# -----------------------------------------------------------------------------
# random resized crop + flip as a separable resampling: out = Ry @ x @ Rx^T per sample


def _sample_crop_boxes(
    batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10
) -> torch.Tensor:
    """Per-sample (top, left, h, w) crops as in torchvision/timm RandomResizedCrop; int64 (B, 4)."""
    area = torch.empty(batch, attempts).uniform_(scale[0], scale[1]) * (height * width)
    aspect = torch.exp(torch.empty(batch, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = ok.int().argmax(dim=1, keepdim=True)  # first attempt that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback when no attempt fits: central crop clamped to the allowed aspect range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    found = ok.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(batch, 2)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).long()


_FILTER_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0}


def _filter_weights(dist: torch.Tensor, interpolation: str) -> torch.Tensor:
    d = dist.abs()
    if interpolation == "bilinear":
        return (1 - d).clamp_min_(0)
    if interpolation == "bicubic":  # Keys cubic with a = -0.5, as PIL
        a = -0.5
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
    return ((dist > -0.5) & (dist <= 0.5)).to(dist.dtype)  # nearest: source pixel floor(center)


def _resample_matrix(
    start: torch.Tensor,
    length: torch.Tensor,
    flip: torch.Tensor,
    in_size: int,
    out_size: int,
    max_length: int,
    interpolation: str,
) -> torch.Tensor:
    """(B, out_size, in_size) weights resampling the window [start, start+length) of each row to out_size.

    PIL-style: output pixel centres map into the window, the filter is widened by the
    downscale factor (antialiasing) and only taps inside the window count (renormalized).
    Weights are computed for the few taps near each centre, then scattered into the matrix.
    `max_length` (a Python int >= every length) fixes the number of taps without a device sync.
    """
    device = start.device
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    step = length / out_size
    out_pos = torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None]
    out_pos = torch.where(flip[:, None, None], out_size - 1 - out_pos, out_pos)  # mirror = reversed outputs
    centers = start + (out_pos + 0.5) * step  # (B, out, 1) in source pixel coordinates
    if interpolation == "nearest":
        widen, reach = torch.ones_like(step), 0.5
    else:
        widen, reach = step.clamp_min(1.0), _FILTER_SUPPORT[interpolation] * max(max_length / out_size, 1.0)
    taps = int(math.ceil(2 * reach)) + 2
    first = torch.floor(centers - 0.5 - reach)
    src = first + torch.arange(taps, device=device, dtype=torch.float32)  # (B, out, taps) source pixels
    weights = _filter_weights((src + 0.5 - centers) / widen, interpolation)
    weights = weights * ((src >= start) & (src < start + length))
    weights = weights / weights.sum(dim=2, keepdim=True).clamp_min(1e-12)
    matrix = torch.zeros(start.shape[0], out_size, in_size, device=device)
    return matrix.scatter_add_(2, src.clamp(0, in_size - 1).long(), weights)


def _crop_resize_flip(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: tuple[int, int], interpolation: str
) -> torch.Tensor:
    """Crop each sample of uint8 images to its box (top, left, h, w), resize to out_size, mirror where flip.

    Separable resampling as two batched matmuls: out = Ry @ x @ Rx^T per sample and channel.
    `boxes` and `flip` are CPU tensors; returns float32 (B, C, Ho, Wo) on the images' device.
    """
    batch, channels, height, width = images.shape
    out_h, out_w = out_size
    max_h, max_w = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    boxes, flip = host_to_device(boxes, images.device), host_to_device(flip, images.device)
    no_flip = torch.zeros_like(flip)
    ry = _resample_matrix(boxes[:, 0], boxes[:, 2], no_flip, height, out_h, max_h, interpolation)  # (B, Ho, H)
    rx = _resample_matrix(boxes[:, 1], boxes[:, 3], flip, width, out_w, max_w, interpolation)  # (B, Wo, W)
    # (B, H, C, W) layout so that both matmuls are plain bmm over the batch
    x = torch.empty(batch, height, channels, width, device=images.device)
    x.copy_(images.permute(0, 2, 1, 3))
    x = torch.bmm(ry, x.view(batch, height, channels * width))  # (B, Ho, C*W)
    x = torch.bmm(x.view(batch, out_h * channels, width), rx.transpose(1, 2))  # (B, Ho*C, Wo)
    return x.view(batch, out_h, channels, out_w).permute(0, 2, 1, 3).contiguous()


def _translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each sample by its own (dy, dx) in [-max_shift, max_shift], filling with the reflected border."""
    batch, channels, height, width = x.shape
    offsets = host_to_device(torch.randint(0, 2 * max_shift + 1, (batch, 2)), x.device)
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    rows = (offsets[:, 0:1] + torch.arange(height, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[:, 1:2] + torch.arange(width, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch_index = torch.arange(batch, device=x.device)[:, None, None, None]
    channel_index = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows, cols]


# -----------------------------------------------------------------------------
# RandAugment ops on float tensors holding uint8 values (0..255, integral after every op)

_RA_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
_LUT_OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Contrast", "Brightness")
_GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _ra_argument(name: str, level: float, sign: float, increasing: bool) -> float:
    """timm's level_to_arg for one op application: level = magnitude / 10, sign = +-1."""
    if name == "Rotate":
        return 30.0 * level * sign  # degrees
    if name in ("ShearX", "ShearY"):
        return 0.3 * level * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return 0.45 * level * sign  # fraction of the image size
    if name == "SolarizeAdd":
        return float(int(110 * level))
    if name == "Posterize":  # bits kept
        return float(4 - int(4 * level) if increasing else int(4 * level))
    if name == "Solarize":  # threshold
        return float(256 - int(256 * level) if increasing else int(256 * level))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):  # enhance factor
        return 1.0 + 0.9 * level * sign if increasing else 0.1 + 1.8 * level
    return 0.0  # AutoContrast, Equalize, Invert take no argument


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL 'L' conversion (ITU-R 601-2 luma, rounded) of (n, C, H, W); C=1 returns x."""
    if x.shape[1] == 1:
        return x
    return torch.round(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, x, factor): clipped and truncated to integers."""
    return torch.floor((degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255))


def _lut_rows(name: str, xs: torch.Tensor, arg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Lookup tables (k, C, 256) of a pointwise op for images xs (k, C, H, W) with arguments arg (k,)."""
    k, channels = xs.shape[:2]
    a = arg.view(k, 1, 1)
    if name == "Invert":
        rows = 255 - v
    elif name == "Posterize":  # keep the top `bits` bits; bits >= 8 keeps all
        keep = torch.exp2(8 - a.clamp(0, 8))
        rows = torch.floor(v / keep) * keep
    elif name == "Solarize":
        rows = torch.where(v >= a, 255 - v, v)
    elif name == "SolarizeAdd":
        rows = torch.where(v < 128, (v + a).clamp(max=255), v)
    elif name == "Brightness":
        rows = torch.floor((v * a).clamp(0, 255))
    elif name == "Contrast":  # blend with the mean grey level
        mean = torch.floor(_gray(xs).mean(dim=(1, 2, 3)) + 0.5).view(k, 1, 1)
        rows = torch.floor((mean + a * (v - mean)).clamp(0, 255))
    elif name == "AutoContrast":  # stretch each channel's [min, max] to [0, 255]
        lo = xs.amin(dim=(2, 3))[..., None]
        hi = xs.amax(dim=(2, 3))[..., None]
        stretched = torch.floor(((v - lo) * 255 / (hi - lo).clamp_min(1)).clamp(0, 255))
        rows = torch.where(hi > lo, stretched, v)
    elif name == "Equalize":  # PIL ImageOps.equalize, per channel
        idx = xs.reshape(k * channels, -1).long()
        hist = torch.zeros(k * channels, 256, device=xs.device)
        hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
        last_bin = 255 - (hist > 0).flip(1).float().argmax(dim=1, keepdim=True)
        step = torch.floor((hist.sum(dim=1, keepdim=True) - hist.gather(1, last_bin)) / 255)
        below = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each value
        equalized = torch.floor((torch.floor(step / 2) + below) / step.clamp_min(1)).clamp_(max=255)
        rows = torch.where(step > 0, equalized, v.view(1, 256)).view(k, channels, 256)
    else:
        raise AssertionError(name)
    return rows.expand(k, channels, 256)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    n, channels, height, width = x.shape
    return torch.gather(lut, 2, x.reshape(n, channels, -1).long()).view(n, channels, height, width)


def _sharpen(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (border pixels kept)."""
    # SMOOTH = [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 * centre) / 13
    rows = x[:, :, :, :-2] + x[:, :, :, 1:-1] + x[:, :, :, 2:]
    box_sum = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = torch.round((box_sum + 4 * x[:, :, 1:-1, 1:-1]) / 13)
    return _blend(smooth, x, factor)


def _affine_thetas(kinds: list[str], arg: list[float], height: int, width: int) -> torch.Tensor:
    """(k, 2, 3) output -> input maps in grid_sample's normalized coordinates (align_corners=False).

    Each op is first written in PIL's pixel convention p_in = A p_out + t (pixel centres at
    +0.5, shears about the top-left corner, rotation about the centre), then converted with
    p = D (n + 1), D = diag(W/2, H/2):  n_in = D^-1 A D n_out + D^-1 (A D 1 + t) - 1.
    """
    sx, sy = width / 2.0, height / 2.0
    thetas = []
    for kind, a in zip(kinds, arg):
        a00, a01, a10, a11, t0, t1 = 1.0, 0.0, 0.0, 1.0, 0.0, 0.0
        if kind == "ShearX":
            a01 = a
        elif kind == "ShearY":
            a10 = a
        elif kind == "TranslateXRel":
            t0 = a * width
        elif kind == "TranslateYRel":
            t1 = a * height
        elif kind == "Rotate":  # PIL Image.rotate: counter-clockwise by `a` degrees about the centre
            angle = -math.radians(a)
            a00, a01, a10, a11 = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
            t0, t1 = sx - a00 * sx - a01 * sy, sy - a10 * sx - a11 * sy
        b00, b01, b10, b11 = a00, a01 * sy / sx, a10 * sx / sy, a11  # D^-1 A D
        c0 = (a00 * sx + a01 * sy + t0) / sx - 1
        c1 = (a10 * sx + a11 * sy + t1) / sy - 1
        thetas.append([[b00, b01, c0], [b10, b11, c1]])
    return torch.tensor(thetas, dtype=torch.float32).view(len(kinds), 2, 3)


def _warp(x: torch.Tensor, thetas: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Affine warp with PIL semantics: pixels whose source centre lies outside the image get `fill`."""
    k, _, height, width = x.shape
    # normalized output pixel centres (align_corners=False); broadcasting beats affine_grid's tiny bmm
    xs = ((torch.arange(width, device=x.device, dtype=torch.float32) + 0.5) * (2.0 / width) - 1).view(1, 1, width, 1)
    ys = ((torch.arange(height, device=x.device, dtype=torch.float32) + 0.5) * (2.0 / height) - 1).view(1, height, 1, 1)
    t = thetas.view(k, 1, 1, 2, 3)
    grid = xs * t[..., 0] + ys * t[..., 1] + t[..., 2]  # (k, H, W, 2) source (x, y)
    in_range = (grid >= -1) & (grid < 1)
    inside = (in_range[..., 0] & in_range[..., 1]).unsqueeze(1)
    warped = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    # PIL truncates; the epsilon absorbs float error on exact values (e.g. whole-pixel shifts)
    warped = warped.add_(1e-3).floor_().clamp_(0, 255)
    return torch.where(inside, warped, fill.view(1, -1, 1, 1))


# -----------------------------------------------------------------------------
# random erasing (timm RandomErasing, mode "pixel", one box)


def _sample_erase_boxes(batch: int, height: int, width: int, attempts: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(found (B,) bool, boxes (B, 4) int64 top, left, h, w); area 2%..1/3, aspect 0.3..1/0.3."""
    area = torch.empty(batch, attempts).uniform_(0.02, 1 / 3) * (height * width)
    aspect = torch.exp(torch.empty(batch, attempts).uniform_(math.log(0.3), math.log(1 / 0.3)))
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    ok = (w < width) & (h < height) & (w > 0) & (h > 0)
    first = ok.int().argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u = torch.rand(batch, 2)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    return ok.any(dim=1), torch.stack([top, left, h, w], dim=1).long()


def _box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 1, H, W) bool masks of (top, left, h, w) boxes."""
    rows = torch.arange(height, device=boxes.device).view(1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, width)
    top, left, h, w = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)).unsqueeze(1)


# -----------------------------------------------------------------------------
# the train / eval transforms


class TrainAugment(torch.nn.Module):
    """uint8 (B, C, H, W) -> augmented, normalized float32 (B, C, *image_size), on the input's device.

    Random-resized crop, horizontal flip, translation, RandAugment, normalize and random erasing, with
    independent parameters per sample. Mixup/Cutmix is separate (`MixupCutmix`), since it needs
    the labels.
    """

    def __init__(self, config: AugmentConfig):
        super().__init__()
        self.config = config
        self.randaugment = parse_randaugment(config.randaugment) if config.randaugment is not None else None
        self.normalize = _Normalize(config.mean, config.std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, len(self.config.mean))
        if self.randaugment is not None and images.shape[1] not in (1, 3):
            raise ConfigError(f"RandAugment needs 1 or 3 channels, got {images.shape[1]}; set randaugment=None")
        device_type = images.device.type
        amp_off = contextlib.nullcontext()
        if device_type in ("cpu", "cuda"):
            amp_off = torch.autocast(device_type, enabled=False)
        with amp_off:  # keep float32 (and the matmuls exact) under AMP
            return self._augment(images)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        batch, _, height, width = images.shape
        boxes = _sample_crop_boxes(batch, height, width, cfg.scale, cfg.ratio)
        flip = torch.rand(batch) < cfg.hflip
        x = _crop_resize_flip(images, boxes, flip, cfg.image_size, cfg.interpolation)
        x = x.clamp_(0, 255)  # bicubic overshoots
        if cfg.translate > 0:
            x = _translate(x, cfg.translate)
        if self.randaugment is not None and self.randaugment.num_ops > 0:
            x = torch.round_(x)  # RandAugment works on uint8 values, as PIL does
            for _ in range(self.randaugment.num_ops):
                x = self._randaugment_layer(x)
        x = self.normalize(x)
        if cfg.reprob > 0:
            x = self._random_erase(x)
        return x

    def _randaugment_layer(self, x: torch.Tensor) -> torch.Tensor:
        """One RandAugment op per sample (applied with prob p), grouped by kind; updates x in place.

        The plan is made on the host: samples are grouped by op, and every group is computed
        batched. Groups are disjoint, so each reads its samples from x before they are overwritten.
        """
        ra = self.randaugment
        batch, channels, height, width = x.shape
        device = x.device
        op = torch.randint(0, len(_RA_OPS), (batch,))
        u = torch.rand(2, batch)
        if math.isinf(ra.magnitude_std):
            magnitude = torch.rand(batch) * ra.magnitude
        else:
            magnitude = ra.magnitude + ra.magnitude_std * torch.randn(batch)
        levels = (magnitude.clamp(0.0, ra.magnitude_max) / 10.0).tolist()
        signs = torch.where(u[1] < 0.5, -1.0, 1.0).tolist()
        by_op: dict[str, list[int]] = {name: [] for name in _RA_OPS}
        for i, (o, applied) in enumerate(zip(op.tolist(), (u[0] < ra.prob).tolist())):
            if applied:
                by_op[_RA_OPS[o]].append(i)

        def group(names: tuple[str, ...]) -> tuple[list[str], list[int], torch.Tensor, list[float]]:
            """Samples of these ops ordered by op: (op names present, counts, indices, arguments)."""
            present = [n for n in names if by_op[n]]
            idx = [i for n in present for i in by_op[n]]
            args = [_ra_argument(n, levels[i], signs[i], ra.increasing) for n in present for i in by_op[n]]
            return present, [len(by_op[n]) for n in present], torch.tensor(idx, dtype=torch.long), args

        # pointwise ops: one lookup table per sample and channel, a single gather for all of them
        names, counts, index, args = group(_LUT_OPS)
        if names:
            g, args = host_to_device(index, device), host_to_device(torch.tensor(args), device)
            xs = x.index_select(0, g)
            v = torch.arange(256, device=device, dtype=torch.float32).view(1, 1, 256)
            tables, start = [], 0
            for name, n in zip(names, counts):
                tables.append(_lut_rows(name, xs[start : start + n], args[start : start + n], v))
                start += n
            x.index_copy_(0, g, _apply_lut(xs, torch.cat(tables)))
        names, _, index, args = group(("Color",))
        if names and channels == 3:  # saturation; a no-op on grey images, as in PIL
            g = host_to_device(index, device)
            xs = x.index_select(0, g)
            x.index_copy_(0, g, _blend(_gray(xs), xs, host_to_device(torch.tensor(args), device)))
        names, _, index, args = group(("Sharpness",))
        if names and height >= 3 and width >= 3:
            g = host_to_device(index, device)
            x.index_copy_(0, g, _sharpen(x.index_select(0, g), host_to_device(torch.tensor(args), device)))
        names, counts, index, args = group(_GEOMETRIC_OPS)
        if names:
            g = host_to_device(index, device)
            kinds = [name for name, n in zip(names, counts) for _ in range(n)]
            thetas = host_to_device(_affine_thetas(kinds, args, height, width), device)
            x.index_copy_(0, g, _warp(x.index_select(0, g), thetas, self._fill(device), self.config.interpolation))
        return x

    def _fill(self, device: torch.device) -> torch.Tensor:
        """Fill colour of geometric ops: the dataset mean as uint8 values (timm's img_mean)."""
        fill = [min(255, max(0, round(255 * m))) for m in self.config.mean]
        return host_to_device(torch.tensor(fill, dtype=torch.float32), device)

    def _random_erase(self, x: torch.Tensor) -> torch.Tensor:
        """Replace one random box per chosen sample by N(0, 1) noise, in place."""
        batch, channels, height, width = x.shape
        erase = torch.rand(batch) < self.config.reprob
        found, boxes = _sample_erase_boxes(batch, height, width)
        chosen = (erase & found).nonzero().squeeze(1)
        if len(chosen) == 0:
            return x
        boxes = boxes[chosen]
        idx = host_to_device(chosen, x.device)
        mask = _box_mask(host_to_device(boxes, x.device), height, width).expand(-1, channels, -1, -1)
        # noise only for the erased pixels (masked_scatter_ fills them in order)
        noise = torch.randn(channels * int((boxes[:, 2] * boxes[:, 3]).sum()), device=x.device, dtype=x.dtype)
        return x.index_copy_(0, idx, x.index_select(0, idx).masked_scatter_(mask, noise))


class EvalTransform(torch.nn.Module):
    """uint8 (B, C, H, W) -> normalized float32, resized (antialiased) to image_size only if needed."""

    def __init__(self, config: AugmentConfig):
        super().__init__()
        self.config = config
        self.normalize = _Normalize(config.mean, config.std)

    @classmethod
    def for_model(cls, model_config: object) -> EvalTransform:
        """The transform a saved vision model was validated with in training: its size, mean/std and the
        resize recorded in ``extra["interpolation"]`` (bicubic, the recipe's, for models that record none)."""
        return cls(AugmentConfig(image_size=tuple(model_config.img_size), mean=model_config.mean, std=model_config.std,
                                 randaugment=None, interpolation=model_config.extra.get("interpolation", "bicubic")))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        _check_images(images, len(cfg.mean))
        x = images.float()  # F.interpolate is not autocast-listed, so this stays float32 under AMP
        if tuple(x.shape[-2:]) != cfg.image_size:
            if cfg.interpolation == "nearest":
                x = F.interpolate(x, size=cfg.image_size, mode="nearest")
            else:
                x = F.interpolate(x, size=cfg.image_size, mode=cfg.interpolation, align_corners=False, antialias=True)
                x = x.clamp_(0, 255)
        return self.normalize(x)


@dataclass(frozen=True)
class TtaView:
    """One test-time view of a batch: its images, its weight in the average, and whether it is mirrored."""

    images: torch.Tensor
    weight: float
    mirrored: bool


def tta_view_count(flip: bool, shift: int) -> int:
    """How many forward passes :func:`tta_views` makes per batch."""
    return (2 if flip else 1) * (3 if shift else 1)


def tta_views(batch: torch.Tensor, flip: bool, shift: int = 0) -> list[TtaView]:
    """The test-time views of a prepared batch (B, C, H, W), weights summing to 1: the batch; with ``flip``
    also its mirror image; with ``shift`` > 0 each of those also shifted by (+shift, +shift) and (-shift,
    -shift) pixels, the border reflected as ``translate`` fills it in training. The unshifted views share half
    the weight and the shifted ones the other half (unshifted views are the better evidence)."""
    height, width = batch.shape[-2:]
    if shift < 0 or (shift and shift >= min(height, width)):
        raise ConfigError(f"the TTA shift must be whole pixels in [0, {min(height, width)}), got {shift}")
    bases = [(batch, False), (batch.flip(-1), True)] if flip else [(batch, False)]
    if not shift:
        return [TtaView(images, 1 / len(bases), mirrored) for images, mirrored in bases]
    views = [TtaView(images, 0.5 / len(bases), mirrored) for images, mirrored in bases]
    for images, mirrored in bases:
        padded = F.pad(images, (shift,) * 4, mode="reflect")
        for top_left in (0, 2 * shift):  # the window (+shift, +shift) or (-shift, -shift) pixels away
            window = padded[..., top_left : top_left + height, top_left : top_left + width]
            window = torch.empty_like(images).copy_(window)  # dense, in the batch's memory format
            views.append(TtaView(window, 0.25 / len(bases), mirrored))
    return views


# One forward pass takes as many of a batch's views as fit in this many images: one image's six views (`cct
# predict` on a single file) cost about one batch-1 pass instead of six; 20 images' six views, two passes of 60.
# A batch of more images runs view by view.
STACK_VIEWS_UP_TO = 64


def view_outputs(forward: Callable[[torch.Tensor], Any], views: list[TtaView], batch_size: int) -> list[Any]:
    """``forward`` (a tensor, or a tuple of tensors, per image) of each view's images of a batch of
    ``batch_size``, in order: the views stacked into passes of at most ``STACK_VIEWS_UP_TO`` images (at least one
    view per pass)."""
    per_pass = max(1, STACK_VIEWS_UP_TO // max(1, batch_size))
    outputs: list[Any] = []
    for start in range(0, len(views), per_pass):
        group = views[start : start + per_pass]
        if len(group) == 1:
            outputs.append(forward(group[0].images))
            continue
        stacked = forward(torch.cat([view.images for view in group]))
        if isinstance(stacked, tuple):
            outputs.extend(zip(*(part.chunk(len(group)) for part in stacked)))
        else:
            outputs.extend(stacked.chunk(len(group)))
    return outputs


def tta_logits(model: torch.nn.Module, batch: torch.Tensor, flip_tta: bool, shift_tta: int = 0) -> torch.Tensor:
    """float32 logits of a prepared batch; with ``flip_tta`` averaged with those of the mirrored batch, with
    ``shift_tta`` also with those of the views shifted by that many pixels (:func:`tta_views`)."""
    views = tta_views(batch, flip=flip_tta, shift=shift_tta)
    outputs = view_outputs(model, views, len(batch))
    if len(views) == 1:
        return outputs[0].float()
    logits = views[0].weight * outputs[0].float()
    for view, output in zip(views[1:], outputs[1:]):
        logits = logits + view.weight * output.float()
    return logits


# -----------------------------------------------------------------------------
# Mixup / CutMix with label smoothing (timm "batch" mode)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float (B, num_classes) targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an int64 tensor of shape (B,), got {_describe(labels)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if labels.device.type == "cpu" and len(labels) > 0 and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def _check_mixing(*, probabilities: dict[str, float], label_smoothing: float, num_classes: int) -> None:
    """The settings every mixer shares: probabilities in [0, 1], smoothing in [0, 1), a positive class count."""
    for name, p in probabilities.items():
        if not 0 <= p <= 1:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")


@dataclass(frozen=True)
class MixParams:
    """What one MixupCutmix call did: lam = weight of the original batch (after box correction)."""

    lam: float
    box: tuple[int, int, int, int] | None = None  # CutMix (y0, y1, x0, x1) region taken from the flipped batch


class MixupCutmix:
    """Per-batch Mixup / CutMix against the reversed batch, with label-smoothed soft targets.

    Set `enabled = False` to switch mixing off (e.g. late in training); targets stay smoothed.
    """

    def __init__(
        self,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int,
    ):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ConfigError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
        _check_mixing(probabilities={"prob": prob, "switch_prob": switch_prob}, label_smoothing=label_smoothing,
                      num_classes=num_classes)
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.enabled = True
        self.last_params = MixParams(lam=1.0)

    def sample(self, height: int, width: int) -> MixParams:
        """Draw this batch's lambda (and CutMix box) from torch's global CPU generator."""
        mixup_on, cutmix_on = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not self.enabled or not (mixup_on or cutmix_on) or torch.rand(()).item() >= self.prob:
            return MixParams(lam=1.0)
        use_cutmix = cutmix_on and (not mixup_on or torch.rand(()).item() < self.switch_prob)
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        lam = float(torch.distributions.Beta(alpha, alpha, validate_args=False).sample())
        if not use_cutmix:
            return MixParams(lam=lam)
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        return MixParams(lam=1.0 - (y1 - y0) * (x1 - x0) / (height * width), box=(y0, y1, x0, x1))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, params: MixParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix images with images.flip(0) as described by params; returns (images, soft targets)."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if params.lam == 1.0:
            return images, targets
        if params.box is not None:
            y0, y1, x0, x1 = params.box
            pasted = images[:, :, y0:y1, x0:x1].flip(0)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = pasted
        else:
            images = torch.lerp(images.flip(0), images, params.lam)  # lam * x + (1 - lam) * flipped
        return images, targets * params.lam + targets.flip(0) * (1.0 - params.lam)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, C, H, W), got {_describe(images)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be a tensor of shape ({images.shape[0]},), got {_describe(labels)}")
        self.last_params = self.sample(images.shape[2], images.shape[3])
        return self.apply(images, labels, self.last_params)


# -----------------------------------------------------------------------------
# Text: word dropout


class WordDropout(torch.nn.Module):
    """Training augmentation of token ids (B, L): each token becomes ``unk_id`` with probability ``p`` (padding
    too, which the batch's mask hides from the model anyway). Draws from torch's global CPU generator, like
    the image augmentation, so a resumed run replays it."""

    def __init__(self, p: float, unk_id: int) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ConfigError(f"word dropout must be in [0, 1), got {p}")
        self.p, self.unk_id = p, unk_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.p == 0:
            return ids
        drop = host_to_device(torch.rand(ids.shape), ids.device) < self.p
        return ids.masked_fill(drop, self.unk_id)

    def extra_repr(self) -> str:
        return f"p={self.p}, unk_id={self.unk_id}"


# -----------------------------------------------------------------------------
# Text: CutMix along the sequence


class TextCutMix:
    """CutMix for right-padded token ids (B, L): with probability ``prob`` a batch is mixed with the reversed
    batch. With ``lam ~ Beta(alpha, alpha)`` drawn per batch, each text keeps its first ``round(lam * length)``
    tokens and is followed by the first ``round((1 - lam) * length)`` tokens of its partner (openings, since an
    article's opening is its best evidence); its target is the two smoothed labels weighted by their share of
    the tokens it now holds. The result is right-padded again with ``pad_id`` and no longer than the input.

    Made for topic-like tasks that a text's words decide wherever they stand (best with
    ``--positional-embedding none``); order-dependent tasks lose the order across the joint. Draws from torch's
    global CPU generator, so a resumed run replays it. Set ``enabled = False`` to switch mixing off.
    """

    def __init__(self, *, alpha: float, prob: float = 1.0, label_smoothing: float = 0.0, num_classes: int,
                 pad_id: int) -> None:
        if alpha < 0:
            raise ConfigError(f"cutmix alpha must be >= 0, got {alpha}")
        _check_mixing(probabilities={"prob": prob}, label_smoothing=label_smoothing, num_classes=num_classes)
        self.cutmix_alpha, self.prob, self.label_smoothing = alpha, prob, label_smoothing
        self.num_classes, self.pad_id = num_classes, pad_id
        self.enabled = True
        self.last_lam = 1.0

    def sample(self) -> float:
        """This batch's share of each text's own tokens (1.0: not mixed)."""
        if not self.enabled or self.cutmix_alpha == 0 or torch.rand(()).item() >= self.prob:
            return 1.0
        alpha = torch.tensor(self.cutmix_alpha)
        return float(torch.distributions.Beta(alpha, alpha, validate_args=False).sample())

    def apply(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
              lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Join each text's opening to the reversed batch's as described by ``lam``; returns (ids, mask, soft
        targets)."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if lam == 1.0:
            return ids, mask, targets
        width = ids.shape[1]
        lengths = mask.sum(dim=1)
        own = (lam * lengths).round().long()
        taken = torch.minimum(((1.0 - lam) * lengths.flip(0)).round().long(), width - own)
        total = own + taken
        position = torch.arange(width, device=ids.device)[None, :]
        from_own = position < own[:, None]
        index = torch.arange(len(ids), device=ids.device)[:, None]
        rows = torch.where(from_own, index, len(ids) - 1 - index)
        columns = torch.where(from_own, position, (position - own[:, None]).clamp(min=0))
        mixed_mask = position < total[:, None]
        mixed_ids = torch.where(mixed_mask, ids[rows, columns], torch.full_like(ids, self.pad_id))
        weight = torch.where(total > 0, own / total.clamp(min=1), 1.0).to(targets.dtype)[:, None]
        return mixed_ids, mixed_mask, weight * targets + (1.0 - weight) * targets.flip(0)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"ids must be an integer tensor (B, L), got {_describe(ids)}")
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(ids.shape)}, got {_describe(mask)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != ids.shape[:1]:
            raise ValueError(f"labels must be a tensor of shape ({ids.shape[0]},), got {_describe(labels)}")
        self.last_lam = self.sample()
        return self.apply(ids, mask, labels, self.last_lam)
