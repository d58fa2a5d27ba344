"""Tests for compact_transformers.augment (batched train/eval transforms, Mixup/CutMix)."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.augment import (
    AugmentConfig,
    EvalTransform,
    MixParams,
    MixupCutmix,
    RandAugmentSpec,
    TrainAugment,
    parse_randaugment,
    smooth_one_hot,
    tta_view_count,
    tta_views,
)
from compact_transformers import augment as aug_mod
from compact_transformers.errors import ConfigError

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def smooth_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random but locally smooth uint8 images (closer to photos than white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, height // 4 + 1, width // 4 + 1, generator=g) * 255
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def config(channels: int = 3, size: tuple[int, int] = (32, 32), **overrides) -> AugmentConfig:
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.1307,), (0.3081,))
    return AugmentConfig(image_size=size, mean=mean, std=std, **overrides)


# ----------------------------------------------------------------------------- parsing / config


def test_parse_randaugment_defaults_and_any_order():
    assert parse_randaugment("rand-m9-mstd0.5-inc1") == RandAugmentSpec(
        num_ops=2, magnitude=9.0, magnitude_std=0.5, increasing=True
    )
    spec = parse_randaugment("rand-inc0-n3-mstd1.0-m7")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.increasing) == (3, 7.0, 1.0, False)
    assert parse_randaugment("rand-m10-p1.0-mmax12").prob == 1.0
    assert parse_randaugment("rand") == RandAugmentSpec(num_ops=2, magnitude=9.0)


@pytest.mark.parametrize(
    "spec",
    ["", "rand-", "randaug-m9", "auto-m9-n2", "rand-m", "rand-x9", "rand-m9-m8", "rand-n2.5", "rand-inc2", "rand-m9_n2"],
)
def test_parse_randaugment_malformed(spec):
    with pytest.raises(ValueError, match="rand-m"):
        parse_randaugment(spec)


def test_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        AugmentConfig(image_size=(0, 32), mean=MEAN3, std=STD3)
    with pytest.raises(ValueError, match="mean and std"):
        AugmentConfig(image_size=(32, 32), mean=MEAN3, std=STD3[:2])
    with pytest.raises(ValueError, match="interpolation"):
        AugmentConfig(image_size=(32, 32), mean=MEAN3, std=STD3, interpolation="lanczos")
    with pytest.raises(ValueError, match="expected"):
        AugmentConfig(image_size=(32, 32), mean=MEAN3, std=STD3, randaugment="rand-q9")
    assert AugmentConfig(image_size=24, mean=MEAN3, std=STD3).image_size == (24, 24)


def test_bad_image_input_is_rejected():
    aug = TrainAugment(config(3))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    two = AugmentConfig(image_size=(8, 8), mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match="RandAugment needs 1 or 3 channels"):
        TrainAugment(two)(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    no_ra = AugmentConfig(image_size=(8, 8), mean=(0.5, 0.5), std=(0.2, 0.2), randaugment=None)
    assert TrainAugment(no_ra)(torch.zeros(2, 2, 8, 8, dtype=torch.uint8)).shape == (2, 2, 8, 8)
    mix = MixupCutmix(num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        mix(torch.zeros(4, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="float"):
        mix(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- TrainAugment


@pytest.mark.parametrize(
    "channels, in_size, out_size, interpolation",
    [
        (3, (32, 32), (32, 32), "bicubic"),
        (1, (28, 28), (28, 28), "bilinear"),
        (3, (20, 28), (24, 16), "bilinear"),
        (1, (30, 18), (12, 20), "nearest"),
    ],
)
def test_train_shapes_dtypes_finite(channels, in_size, out_size, interpolation):
    aug = TrainAugment(config(channels, out_size, reprob=0.5, interpolation=interpolation))
    out = aug(smooth_images(16, channels, *in_size))
    assert out.shape == (16, channels, *out_size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_full_crop_and_flip_is_exact_per_sample():
    # scale/ratio pinned to the whole image, no RandAugment: each output is exactly the
    # normalized image or its mirror, and both occur in the batch.
    images = smooth_images(1, 3, 32, 32).expand(48, 3, 32, 32).contiguous()
    aug = TrainAugment(config(3, scale=(1.0, 1.0), ratio=(1.0, 1.0), randaugment=None))
    out = aug(images)
    plain = EvalTransform(config(3))(images[:1])
    is_plain = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_flipped = (out - plain.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (is_plain | is_flipped).all()
    assert is_plain.any() and is_flipped.any()


def test_per_sample_randomness():
    images = smooth_images(1, 3, 32, 32).expand(32, 3, 32, 32).contiguous()
    out = TrainAugment(config(3, hflip=0.0))(images)  # crops + RandAugment differ per sample
    flat = out.flatten(1)
    distinct = {tuple(row.tolist()) for row in flat.round(decimals=3)}
    assert len(distinct) > 24


def test_rng_state_reproduces_augmentation():
    images = smooth_images(16, 3, 32, 32)
    aug = TrainAugment(config(3, reprob=0.5))
    mix = MixupCutmix(num_classes=10)
    labels = torch.arange(16) % 10
    state = torch.get_rng_state()
    a, ta = mix(aug(images), labels)
    b, tb = mix(aug(images), labels)
    torch.set_rng_state(state)
    c, tc = mix(aug(images), labels)
    assert torch.equal(a, c) and torch.equal(ta, tc)
    assert not torch.equal(a, b)


def test_randaugment_changes_images_and_survives_extremes():
    # p=1, many ops, full magnitude range (mstd inf): every op kind gets exercised, including
    # on constant images (AutoContrast/Equalize degenerate cases) and grey images.
    torch.manual_seed(0)
    for channels in (1, 3):
        images = smooth_images(24, channels, 16, 20)
        images[:4] = 0
        images[4:8] = 255
        images[8:12] = 77
        cfg = config(
            channels, (16, 20), scale=(1.0, 1.0), ratio=(1.25, 1.25), hflip=0.0, randaugment="rand-n6-m10-mstdinf-p1"
        )
        with_ra = TrainAugment(cfg)(images)
        without = EvalTransform(cfg)(images)
        assert torch.isfinite(with_ra).all()
        assert (with_ra - without).abs().amax(dim=(1, 2, 3))[12:].min() > 0  # every real image changed


def test_each_op_runs_on_grey_and_colour():
    v = torch.arange(256.0).view(1, 1, 256)
    for channels in (1, 3):
        x = smooth_images(3, channels, 12, 12).float()
        for name in aug_mod._LUT_OPS:
            lut = aug_mod._lut_rows(name, x, torch.full((3,), 0.5 if name != "Solarize" else 128.0), v)
            out = aug_mod._apply_lut(x, lut)
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
        thetas = aug_mod._affine_thetas(["Rotate", "ShearX", "TranslateYRel"], torch.tensor([20.0, 0.2, -0.3]), 12, 12)
        assert aug_mod._warp(x, thetas, torch.full((channels,), 9.0), "bilinear").shape == x.shape
        assert aug_mod._sharpen(x, torch.full((3,), 1.5)).shape == x.shape


def test_random_erasing_is_a_noise_rectangle():
    images = smooth_images(32, 3, 32, 32)
    state = torch.get_rng_state()
    clean = TrainAugment(config(3, reprob=0.0))(images)
    torch.set_rng_state(state)  # erasing draws come last, so everything before it is identical
    erased = TrainAugment(config(3, reprob=1.0))(images)
    changed = (clean != erased).any(dim=1)  # (B, H, W)
    assert changed.flatten(1).any(dim=1).float().mean() > 0.9
    for mask in changed:
        if not mask.any():
            continue
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert len(rows) == h and len(cols) == w  # one contiguous box
        assert 0.02 * 1024 * 0.5 <= h * w <= 1024 / 3 * 1.2
    noise = erased[changed.unsqueeze(1).expand_as(erased)]
    assert abs(noise.mean().item()) < 0.15 and abs(noise.std().item() - 1) < 0.15


def test_autocast_keeps_float32_and_values():
    images = smooth_images(8, 3, 32, 32)
    aug = TrainAugment(config(3))
    state = torch.get_rng_state()
    ref = aug(images)
    torch.set_rng_state(state)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = aug(images)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- parity with PIL (timm's engine)

def _to_pil(x: torch.Tensor):
    from PIL import Image

    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def _from_pil(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()


def test_pointwise_and_enhance_ops_match_pil():
    pytest.importorskip("PIL")
    from PIL import ImageEnhance, ImageOps

    img = smooth_images(1, 3, 20, 24, seed=3)
    pil, x = _to_pil(img[0]), img.float()
    v = torch.arange(256.0).view(1, 1, 256)
    cases = {
        ("Equalize", 0.0): ImageOps.equalize(pil),
        ("AutoContrast", 0.0): ImageOps.autocontrast(pil),
        ("Posterize", 2.0): ImageOps.posterize(pil, 2),
        ("Solarize", 100.0): ImageOps.solarize(pil, 100),
        ("Contrast", 1.6): ImageEnhance.Contrast(pil).enhance(1.6),
        ("Brightness", 0.4): ImageEnhance.Brightness(pil).enhance(0.4),
    }
    for (name, arg), ref in cases.items():
        ours = aug_mod._apply_lut(x, aug_mod._lut_rows(name, x, torch.tensor([arg]), v))[0]
        assert (ours - _from_pil(ref)).abs().max() <= 1, name
    color = aug_mod._blend(aug_mod._gray(x), x, torch.tensor([1.7]))[0]
    assert (color - _from_pil(ImageEnhance.Color(pil).enhance(1.7))).abs().max() <= 1
    sharp = aug_mod._sharpen(x, torch.tensor([1.8]))[0]
    assert (sharp - _from_pil(ImageEnhance.Sharpness(pil).enhance(1.8))).abs().max() <= 1


def test_geometric_ops_match_pil():
    pytest.importorskip("PIL")
    from PIL import Image

    img = smooth_images(1, 3, 20, 24, seed=4)
    pil, x = _to_pil(img[0]), img.float()
    fill = (10, 20, 30)
    affine = Image.AFFINE
    refs = {
        ("Rotate", 20.0): pil.rotate(20.0, resample=Image.BILINEAR, fillcolor=fill),
        ("ShearX", 0.25): pil.transform(pil.size, affine, (1, 0.25, 0, 0, 1, 0), Image.BILINEAR, fillcolor=fill),
        ("ShearY", -0.2): pil.transform(pil.size, affine, (1, 0, 0, -0.2, 1, 0), Image.BILINEAR, fillcolor=fill),
        ("TranslateXRel", 0.3): pil.transform(pil.size, affine, (1, 0, 7.2, 0, 1, 0), Image.BILINEAR, fillcolor=fill),
    }
    for (kind, arg), ref in refs.items():
        thetas = aug_mod._affine_thetas([kind], torch.tensor([arg]), 20, 24)
        ours = aug_mod._warp(x, thetas, torch.tensor(fill, dtype=torch.float32), "bilinear")[0]
        diff = (ours - _from_pil(ref)).abs()
        assert diff.max() <= 1 and diff.mean() < 0.05, kind


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crop_resize_matches_pil(interpolation):
    pytest.importorskip("PIL")
    from PIL import Image

    img = smooth_images(1, 3, 20, 24, seed=5)
    pil = _to_pil(img[0])
    resample = Image.BILINEAR if interpolation == "bilinear" else Image.BICUBIC
    for top, left, h, w, out_h, out_w in [(2, 3, 15, 17, 20, 24), (0, 0, 20, 24, 9, 11)]:
        ref = _from_pil(pil.crop((left, top, left + w, top + h)).resize((out_w, out_h), resample))
        boxes = torch.tensor([[top, left, h, w]])
        ours = aug_mod._crop_resize_flip(img, boxes, torch.tensor([False]), (out_h, out_w), interpolation)
        assert (ours[0].clamp(0, 255).round() - ref).abs().max() <= 1


# ----------------------------------------------------------------------------- EvalTransform


def test_eval_is_plain_normalize_when_sizes_match():
    images = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8)
    out = EvalTransform(config(3, (8, 10)))(images)
    mean, std = torch.tensor(MEAN3).view(1, 3, 1, 1), torch.tensor(STD3).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    assert out.dtype == torch.float32


def test_eval_resizes_when_sizes_differ():
    images = torch.full((2, 1, 40, 30), 200, dtype=torch.uint8)
    out = EvalTransform(config(1, (20, 16), interpolation="bicubic"))(images)
    assert out.shape == (2, 1, 20, 16)
    torch.testing.assert_close(out, torch.full_like(out, (200 / 255 - 0.1307) / 0.3081), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- Mixup / CutMix / smoothing


def test_smooth_one_hot_exact_values():
    labels = torch.tensor([0, 3, 2])
    t = smooth_one_hot(labels, num_classes=4, smoothing=0.1)
    on, off = 1 - 0.1 + 0.1 / 4, 0.1 / 4
    expected = torch.full((3, 4), off)
    expected[0, 0] = expected[1, 3] = expected[2, 2] = on
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-7)
    assert torch.equal(smooth_one_hot(labels, 4, 0.0), torch.eye(4)[labels])
    with pytest.raises(ValueError, match="labels"):
        smooth_one_hot(torch.tensor([0, 4]), 4, 0.1)
    with pytest.raises(ValueError, match="int64"):
        smooth_one_hot(torch.tensor([0.0, 1.0]), 4, 0.1)


def test_mixup_only():
    torch.manual_seed(1)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mix = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=6)
    lams = []
    for _ in range(20):
        mixed, targets = mix(images, labels)
        lam = mix.last_params.lam
        lams.append(lam)
        assert 0.0 <= lam <= 1.0 and mix.last_params.box is None
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        base = smooth_one_hot(labels, 6, 0.1)
        torch.testing.assert_close(targets, lam * base + (1 - lam) * base.flip(0))
    assert len(set(lams)) == len(lams)  # a fresh lambda per batch


def test_cutmix_pastes_box_from_flipped_batch():
    torch.manual_seed(2)
    images, labels = torch.randn(5, 3, 16, 12), torch.tensor([1, 0, 3, 2, 0])
    mix = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=4)
    seen_box = False
    for _ in range(20):
        mixed, targets = mix(images, labels)
        params = mix.last_params
        if params.box is None:  # lam == 1: nothing to paste
            continue
        seen_box = True
        y0, y1, x0, x1 = params.box
        inside = torch.zeros(16, 12, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[..., inside], images.flip(0)[..., inside])
        assert torch.equal(mixed[..., ~inside], images[..., ~inside])
        assert params.lam == pytest.approx(1 - inside.sum().item() / (16 * 12))
        torch.testing.assert_close(targets.sum(1), torch.ones(5))
        assert targets[0, 1].item() == pytest.approx(params.lam)  # own label (1) weighted lam
        assert targets[0, 0].item() == pytest.approx(1 - params.lam)  # partner's label (0) the rest
    assert seen_box


def test_switching_uses_both_modes_and_keeps_dtype():
    torch.manual_seed(3)
    mix = MixupCutmix(num_classes=10)
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.bfloat16), torch.arange(8)
    modes = set()
    for _ in range(30):
        mixed, targets = mix(images, labels)
        assert mixed.dtype == torch.bfloat16 and targets.dtype == torch.float32
        assert torch.isfinite(mixed.float()).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(8))
        modes.add("cutmix" if mix.last_params.box is not None else "mixup")
    assert modes == {"cutmix", "mixup"}


@pytest.mark.parametrize("kwargs", [dict(prob=0.0), dict(mixup_alpha=0.0, cutmix_alpha=0.0)])
def test_no_mixing_returns_smoothed_one_hot(kwargs):
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([3, 1, 0, 2])
    mix = MixupCutmix(num_classes=5, label_smoothing=0.2, **kwargs)
    mixed, targets = mix(images, labels)
    assert torch.equal(mixed, images)
    torch.testing.assert_close(targets, smooth_one_hot(labels, 5, 0.2))
    assert mix.last_params == MixParams(lam=1.0)


def test_mixup_disabled_flag():
    mix = MixupCutmix(num_classes=3)
    mix.enabled = False
    images = torch.randn(4, 3, 4, 4)
    mixed, targets = mix(images, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(mixed, images)
    assert torch.allclose(targets.max(1).values, torch.full((4,), 1 - 0.1 + 0.1 / 3))


# ----------------------------------------------------------------------------- translation


def test_translation_is_a_per_sample_shift_with_reflected_borders():
    images = smooth_images(64, 1, 12, 12, seed=3)
    cfg = config(channels=1, size=(12, 12), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment=None,
                 translate=2)
    out = TrainAugment(cfg)(images)
    # undo the normalisation: back to grey levels
    grey = out * (cfg.std[0] * 255) + cfg.mean[0] * 255
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    shifts = set()
    for i in range(images.shape[0]):
        matches = [
            (dy, dx) for dy in range(5) for dx in range(5)
            if torch.allclose(grey[i], padded[i, :, dy : dy + 12, dx : dx + 12], atol=1e-3)
        ]  # fmt: skip
        assert matches, f"sample {i} is not a shifted window of its image"
        shifts.add(matches[0])
    assert len(shifts) > 10  # per-sample offsets, both signs on both axes
    assert {dy for dy, _ in shifts} == set(range(5)) and {dx for _, dx in shifts} == set(range(5))


def test_translation_off_leaves_images_in_place_and_bad_values_raise():
    images = smooth_images(4, 3, 8, 8)
    plain = TrainAugment(config(size=(8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment=None))(images)
    assert torch.allclose(plain, EvalTransform(config(size=(8, 8)))(images), atol=1e-4)
    for bad in (-1, 8, 1.5, True):
        with pytest.raises(ValueError, match="translate"):
            config(size=(8, 8), translate=bad)


def test_word_dropout_replaces_a_share_of_the_tokens_by_unk_reproducibly():
    from compact_transformers.augment import WordDropout

    ids = torch.randint(2, 100, (64, 50))
    assert torch.equal(WordDropout(0.0, unk_id=0)(ids), ids)
    torch.manual_seed(1)
    out = WordDropout(0.3, unk_id=0)(ids)
    dropped = out != ids
    assert (out[dropped] == 0).all() and abs(dropped.float().mean().item() - 0.3) < 0.02
    torch.manual_seed(1)
    assert torch.equal(WordDropout(0.3, unk_id=0)(ids), out)  # the global generator decides: resumable
    with pytest.raises(ValueError, match="word dropout"):
        WordDropout(1.0, unk_id=0)


def _text_batch(lengths: list[int], width: int, pad: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids whose token j of text i is 100 * (i + 1) + j: every token says where it came from."""
    ids = torch.full((len(lengths), width), pad)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.arange(length) + 100 * (i + 1)
    return ids, torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("lam", [0.5, 0.3, 0.81, 0.02])
def test_text_cutmix_joins_each_opening_to_the_reversed_batchs_with_targets_by_token_share(lam: float) -> None:
    from compact_transformers.augment import TextCutMix

    lengths, width = [9, 4, 0, 7, 1, 9], 9
    ids, mask = _text_batch(lengths, width)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mix = TextCutMix(alpha=1.0, num_classes=4, pad_id=1, label_smoothing=0.0)
    mixed, mixed_mask, targets = mix.apply(ids, mask, labels, lam)
    assert mixed.shape == ids.shape and mixed_mask.dtype == torch.bool
    for i, length in enumerate(lengths):
        partner = len(lengths) - 1 - i
        own = round(lam * length)
        taken = min(round((1 - lam) * lengths[partner]), width - own)
        expected = ids[i, :own].tolist() + ids[partner, :taken].tolist()
        n = len(expected)
        assert mixed[i, :n].tolist() == expected, i
        assert mixed_mask[i].tolist() == [True] * n + [False] * (width - n)  # right-padded: a valid batch
        assert (mixed[i, n:] == 1).all()
        share = own / n if n else 1.0
        want = torch.zeros(4)
        want[labels[i]] += share
        want[labels[partner]] += 1 - share
        assert torch.allclose(targets[i], want), i


def test_text_cutmix_off_or_not_drawn_leaves_the_batch_and_smooths_the_labels() -> None:
    from compact_transformers.augment import TextCutMix, smooth_one_hot

    ids, mask = _text_batch([5, 3, 4, 2], 5)
    labels = torch.tensor([0, 1, 2, 0])
    smoothed = smooth_one_hot(labels, 3, 0.1)
    for mix in (TextCutMix(alpha=1.0, prob=0.0, label_smoothing=0.1, num_classes=3, pad_id=1),
                TextCutMix(alpha=0.0, label_smoothing=0.1, num_classes=3, pad_id=1)):
        out_ids, out_mask, targets = mix(ids, mask, labels)
        assert mix.last_lam == 1.0 and out_ids is ids and out_mask is mask and torch.allclose(targets, smoothed)
    mix = TextCutMix(alpha=1.0, label_smoothing=0.1, num_classes=3, pad_id=1)
    mix.enabled = False
    assert mix(ids, mask, labels)[0] is ids


def test_text_cutmix_draws_from_the_global_generator_so_a_resumed_run_replays_it() -> None:
    from compact_transformers.augment import TextCutMix

    ids, mask = _text_batch([30, 25, 28, 30], 30)
    labels = torch.tensor([0, 1, 2, 3])
    mix = TextCutMix(alpha=1.0, prob=0.5, num_classes=4, pad_id=1)
    torch.manual_seed(3)
    first = [mix(ids, mask, labels) for _ in range(20)]
    lams = []
    torch.manual_seed(3)
    for out in first:
        again = mix(ids, mask, labels)
        lams.append(mix.last_lam)
        assert all(torch.equal(a, b) for a, b in zip(out, again))
    drawn = [lam for lam in lams if lam != 1.0]
    assert 3 <= len(drawn) <= 17 and all(0 < lam < 1 for lam in drawn)  # about half the batches, Beta(1, 1)


def test_a_text_model_reads_a_mixed_text_as_the_same_words_alone() -> None:
    from compact_transformers.augment import TextCutMix
    from compact_transformers.models import create_model

    torch.manual_seed(0)
    model = create_model("text_cct_2_1x1", vocab_size=800, word_dim=8, seq_len=16, num_classes=3,
                         positional_embedding="none").eval()
    ids, mask = _text_batch([16, 11, 6, 14], 16)
    ids = ids % 800
    mixed, mixed_mask, _ = TextCutMix(alpha=1.0, num_classes=3, pad_id=1).apply(ids, mask, torch.tensor([0, 1, 2, 0]),
                                                                              0.6)  # fmt: skip
    with torch.no_grad():
        together = model(mixed, mixed_mask)
        for i in range(len(mixed)):
            n = int(mixed_mask[i].sum())
            alone = model(mixed[i : i + 1, :n], mixed_mask[i : i + 1, :n])
            assert torch.allclose(together[i], alone[0], atol=1e-5), i


def test_text_cutmix_refuses_bad_settings_and_inputs() -> None:
    from compact_transformers.augment import TextCutMix

    for kwargs, needle in (({"alpha": -1.0}, "alpha"), ({"alpha": 1.0, "prob": 1.5}, "prob"),
                           ({"alpha": 1.0, "label_smoothing": 1.0}, "label_smoothing")):
        with pytest.raises(ValueError, match=needle):
            TextCutMix(num_classes=3, pad_id=1, **kwargs)
    mix = TextCutMix(alpha=1.0, num_classes=3, pad_id=1)
    ids, mask = _text_batch([3, 2], 4)
    with pytest.raises(ValueError, match="mask"):
        mix(ids, mask.long(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ids"):
        mix(ids.float(), mask, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        mix(ids, mask, torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------- waiting for the device


@pytest.mark.parametrize("channels", [1, 3])
def test_augmenting_and_mixing_on_a_device_never_wait_for_it(channels: int) -> None:
    """The per-sample plans are drawn on the host and queued to the device without a blocking copy, and no value
    is read back: on a GPU each wait would leave it idle (the meta device shows every copy and read)."""
    from device_waits import DeviceWaits

    from compact_transformers.augment import TextCutMix, WordDropout

    augment = TrainAugment(config(channels, translate=2, reprob=0.5, randaugment="rand-m9-mstd0.5-inc1-n3"))
    mix = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                      num_classes=10)  # fmt: skip
    images = torch.empty(64, channels, 32, 32, dtype=torch.uint8, device="meta")
    labels = torch.empty(64, dtype=torch.long, device="meta")
    with DeviceWaits() as seen:
        for _ in range(4):  # mixup and cutmix both drawn, every RandAugment op kind in some sample
            mixed, targets = mix(augment(images), labels)
        dropped = WordDropout(0.1, unk_id=0)(torch.empty(8, 20, dtype=torch.long, device="meta"))
        text_mix = TextCutMix(alpha=1.0, num_classes=10, pad_id=1)
        for _ in range(4):
            joined, _, text_targets = text_mix(dropped, torch.empty(8, 20, dtype=torch.bool, device="meta"),
                                               labels[:8])  # fmt: skip
    assert mixed.device.type == targets.device.type == dropped.device.type == joined.device.type == "meta"
    assert text_targets.device.type == "meta"
    assert seen.waits == []


def test_tta_views_shift_the_batch_and_its_mirror_a_pixel_each_way_with_half_the_weight() -> None:
    batch = torch.arange(2 * 1 * 5 * 4, dtype=torch.float32).reshape(2, 1, 5, 4)
    views = tta_views(batch, flip=True, shift=1)
    assert len(views) == tta_view_count(True, 1) == 6
    assert [v.mirrored for v in views] == [False, True, False, False, True, True]
    assert [v.weight for v in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    assert torch.equal(views[0].images, batch) and torch.equal(views[1].images, batch.flip(-1))
    down_right, up_left = views[2].images, views[3].images
    assert torch.equal(down_right[..., 1:, 1:], batch[..., :-1, :-1])
    assert torch.equal(up_left[..., :-1, :-1], batch[..., 1:, 1:])
    assert torch.equal(down_right[..., 0, 1:], batch[..., 1, :-1])  # the border reflected, as translate fills it
    assert torch.equal(views[4].images[..., 1:, 1:], batch.flip(-1)[..., :-1, :-1])  # the mirror image, shifted
    assert all(v.images.shape == batch.shape and v.images.is_contiguous() for v in views)


@pytest.mark.parametrize(("flip", "shift", "weights"), [(False, 0, [1.0]), (True, 0, [0.5, 0.5]),
                                                        (False, 2, [0.5, 0.25, 0.25])])
def test_tta_views_weights(flip: bool, shift: int, weights: list[float]) -> None:
    batch = torch.rand(3, 2, 6, 6)
    views = tta_views(batch, flip=flip, shift=shift)
    assert [v.weight for v in views] == weights and len(views) == tta_view_count(flip, shift)
    assert torch.equal(views[0].images, batch)


def test_tta_views_refuse_a_shift_as_large_as_the_image() -> None:
    with pytest.raises(ConfigError, match=r"TTA shift must be whole pixels in \[0, 4\), got 4"):
        tta_views(torch.rand(1, 1, 4, 6), flip=False, shift=4)


class _CountingModel(torch.nn.Module):
    """A small conv classifier whose logits depend on where the pixels are, counting its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.head = torch.nn.Linear(4 * 6 * 6, 3)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        return self.head(self.conv(x).flatten(1))


@pytest.mark.parametrize("images, passes", [(1, [6]), (10, [60]), (11, [55, 11]), (20, [60, 60]), (21, [63, 63]),
                                            (32, [64, 64, 64]), (65, [65] * 6)])
def test_tta_logits_stack_the_views_of_a_batch_into_passes_with_the_same_result(
        images: int, passes: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """As many views as fit in STACK_VIEWS_UP_TO images go through the model as one batch (one image's six views:
    one pass, not six; 20 images: two passes of three views); a batch above it, view by view. Either way the
    logits are the weighted average of the views'."""
    model, batch = _CountingModel(), torch.rand(images, 1, 8, 8)
    views = tta_views(batch, flip=True, shift=1)
    with torch.no_grad():
        expected = sum(view.weight * model(view.images) for view in views)
    model.batch_sizes.clear()
    with torch.no_grad():
        got = aug_mod.tta_logits(model, batch, flip_tta=True, shift_tta=1)
    assert model.batch_sizes == passes
    torch.testing.assert_close(got, expected)
    monkeypatch.setattr(aug_mod, "STACK_VIEWS_UP_TO", 0)
    with torch.no_grad():
        torch.testing.assert_close(aug_mod.tta_logits(model, batch, flip_tta=True, shift_tta=1), expected)
