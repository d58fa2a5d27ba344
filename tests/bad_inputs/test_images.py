"""Image files that are damaged, not images at all, or in unusual modes, for `cct predict` and `cct train`.

An unreadable file is skipped with a warning naming it; only a command left with nothing to work on fails (exit 2).
Every readable mode Pillow opens (palette with transparency, LA, CMYK, 16-bit, 1-bit, float, animated) works.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compact_transformers.models import load_model

RNG = np.random.default_rng(0)


def _pixels(shape: tuple[int, ...], dtype=np.uint8, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png() -> bytes:
    return _encoded(Image.fromarray(_pixels((20, 20, 3))), "PNG")


def _jpeg() -> bytes:
    return _encoded(Image.fromarray(_pixels((32, 32, 3))), "JPEG", quality=90)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int, color_type: int = 0, idat: bytes | None = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit), with a tiny (or no) image data chunk."""
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    if idat is not None:
        data += _chunk(b"IDAT", zlib.compress(idat + b"\x00" * 64))
    return data + _chunk(b"IEND", b"")


def _bad_crc() -> bytes:
    data = bytearray(_png())
    data[-20] ^= 0xFF  # inside the last IDAT bytes or its checksum
    return bytes(data)


# name -> (file name, bytes): files no decoder can read
UNREADABLE: dict[str, tuple[str, Callable[[], bytes]]] = {
    "zero-byte png": ("empty.png", lambda: b""),
    "zero-byte jpeg": ("empty.jpg", lambda: b""),
    "text renamed .png": ("notes.png", lambda: b"these are my notes, not an image\n"),
    "html renamed .jpg": ("page.jpg", lambda: b"<!doctype html><html><body>404</body></html>"),
    "random bytes .bmp": ("noise.bmp", lambda: RNG.bytes(500)),
    "png signature then garbage": ("garbage.png", lambda: b"\x89PNG\r\n\x1a\n" + RNG.bytes(300)),
    "truncated png": ("half.png", lambda: _png()[: len(_png()) // 2]),
    "truncated jpeg": ("half.jpg", lambda: _jpeg()[: len(_jpeg()) // 2]),
    "png with a damaged data chunk": ("crc.png", _bad_crc),
    "png header without data": ("nodata.png", lambda: _png_header(16, 16, idat=None)),
    "png of width 0": ("zero.png", lambda: _png_header(0, 16)),
    "decompression bomb header": ("bomb.png", lambda: _png_header(100_000, 100_000)),
    "huge header, truncated data": ("big.png", lambda: _png_header(12_000, 8_000)),
}


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(_pixels((16, 16), high=4)).convert("P")
    image.info["transparency"] = 0
    return image


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_pixels((16, 16, 3))).convert("P") for _ in range(3)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


# name -> (file name, bytes): unusual but readable
READABLE: dict[str, tuple[str, Callable[[], bytes]]] = {
    "palette with transparency": ("palette.png", lambda: _encoded(_palette_with_transparency(), "PNG",
                                                                  transparency=0)),
    "LA": ("la.png", lambda: _encoded(Image.fromarray(_pixels((16, 16, 2))), "PNG")),
    "RGBA": ("rgba.png", lambda: _encoded(Image.fromarray(_pixels((16, 16, 4))), "PNG")),
    "CMYK jpeg": ("cmyk.jpg", lambda: _encoded(Image.fromarray(_pixels((16, 16, 4)), mode="CMYK"), "JPEG")),
    "grayscale jpeg": ("gray.jpg", lambda: _encoded(Image.fromarray(_pixels((40, 40))), "JPEG")),
    "16-bit png": ("deep.png", lambda: _encoded(Image.fromarray(_pixels((16, 16), np.uint16, 65536)), "PNG")),
    "1-bit png": ("bits.png", lambda: _encoded(Image.fromarray(_pixels((16, 16)) > 127), "PNG")),
    "I;16 tiff": ("deep.tif", lambda: _encoded(Image.fromarray(_pixels((16, 16), np.uint16, 65536)), "TIFF")),
    "32-bit integer tiff": ("int.tif", lambda: _encoded(Image.fromarray(_pixels((16, 16), np.int32, 4096)), "TIFF")),
    "F tiff in [0, 1]": ("float.tif", lambda: _encoded(Image.fromarray(RNG.random((16, 16), np.float32)), "TIFF")),
    "F tiff of large values": ("floatbig.tif",
                               lambda: _encoded(Image.fromarray(RNG.random((16, 16), np.float32) * 5000), "TIFF")),
    "animated gif": ("anim.gif", _animated_gif),
    "1x1 pixel": ("dot.png", lambda: _encoded(Image.fromarray(_pixels((1, 1, 3))), "PNG")),
    "1x300 strip": ("strip.png", lambda: _encoded(Image.fromarray(_pixels((1, 300, 3))), "PNG")),
    "png named .jpg": ("really_png.jpg", _png),
    "webp": ("pic.webp", lambda: _encoded(Image.fromarray(_pixels((16, 16, 3))), "WEBP")),
    "multi-page tiff": ("pages.tif", lambda: _encoded(Image.fromarray(_pixels((16, 16, 3))), "TIFF", save_all=True,
                                                      append_images=[Image.fromarray(_pixels((8, 8, 3)))])),
    "bmp": ("pic.bmp", lambda: _encoded(Image.fromarray(_pixels((16, 16, 3))), "BMP")),
    "pgm": ("pic.pgm", lambda: _encoded(Image.fromarray(_pixels((16, 16))), "PPM")),
}


def write(folder: Path, table: dict, name: str) -> Path:
    file_name, make = table[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_bytes(make())
    return path


# --------------------------------------------------------------------------------------------- predict


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_predict_an_unreadable_file_exits_2(kind: str, rgb_model: Path, tmp_path: Path, cct) -> None:
    path = write(tmp_path, UNREADABLE, kind)
    outcome = cct("predict", rgb_model, path, "--json")
    outcome.error_line("predict", path.name, "image")
    assert outcome.out == ""
    assert f"warning: cannot read {path}" in outcome.err  # the reason, for the one file


@pytest.mark.parametrize("kind", list(READABLE))
@pytest.mark.parametrize("model", ["rgb_model", "digits_run"])
def test_predict_reads_every_mode(kind: str, model: str, tmp_path: Path, cct, request: pytest.FixtureRequest) -> None:
    source = request.getfixturevalue(model)
    path = write(tmp_path, READABLE, kind)
    outcome = cct("predict", source, path, "--json", "--top-k", "2")
    [line] = outcome.succeeded().splitlines()
    record = json.loads(line)
    assert record["file"] == str(path) and len(record["predictions"]) == 2
    assert outcome.err == ""


def test_predict_a_mix_predicts_the_readable_files(rgb_model: Path, tmp_path: Path, cct) -> None:
    bad = [write(tmp_path / "mix", UNREADABLE, kind) for kind in UNREADABLE]
    good = [write(tmp_path / "mix", READABLE, kind) for kind in ("RGBA", "CMYK jpeg", "16-bit png")]
    outcome = cct("predict", rgb_model, tmp_path / "mix", "--json")
    records = [json.loads(line) for line in outcome.succeeded().splitlines()]
    assert sorted(r["file"] for r in records) == sorted(map(str, good))
    warnings = outcome.err.splitlines()
    assert len(warnings) == len(bad) and all(line.startswith("warning: cannot read ") for line in warnings)
    assert all(any(str(path) in line for line in warnings) for path in bad)


def test_predict_a_folder_of_only_unreadable_files_exits_2(rgb_model: Path, tmp_path: Path, cct) -> None:
    for kind in UNREADABLE:
        write(tmp_path / "bad", UNREADABLE, kind)
    outcome = cct("predict", rgb_model, tmp_path / "bad", "--batch-size", "4")
    outcome.error_line("predict", f"none of the {len(UNREADABLE)} file", "image")
    assert outcome.out == ""


def test_predict_an_unreadable_file_as_a_process(rgb_model: Path, tmp_path: Path, process) -> None:
    """The real exit code and stderr: no traceback, one reason, one error line."""
    path = write(tmp_path, UNREADABLE, "truncated png")
    outcome = process("predict", rgb_model, path)
    outcome.error_line("predict", path.name)


# ----------------------------------------------------------------------------------------------- train


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_train_on_a_class_of_only_unreadable_files_exits_2(kind: str, tmp_path: Path, cct, make) -> None:
    data = tmp_path / "data"
    make.images(data / "a", 4)
    path = write(data / "b", UNREADABLE, kind)
    outcome = cct("train", "--dataset", "folder", "--data", data, "--epochs", "1", "--quiet", "--device", "cpu",
                  "--output", tmp_path / "runs")  # fmt: skip
    outcome.error_line("train", str(data), "b 0", "readable")
    assert not (tmp_path / "runs").exists(), path


def test_train_skips_unreadable_files_and_reads_every_mode(tmp_path: Path, cct, make,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    make.images(data / "a", 4)
    make.images(data / "b", 4)
    odd = [write(data / "a", READABLE, kind) for kind in READABLE]
    bad = [write(data / "b", UNREADABLE, kind) for kind in UNREADABLE]
    outcome = cct("train", "--dataset", "folder", "--data", data, "--img-size", "16", "--epochs", "1",
                  "--batch-size", "8", "--quiet", "--device", "cpu", "--output", tmp_path / "runs", "--name", "mix")
    outcome.succeeded()
    run = tmp_path / "runs" / "mix"
    final = json.loads((run / "final.json").read_text())
    assert final["epochs"] == 1
    # every readable file took part (4 + 4 + the odd ones, split 80/20 per class), every unreadable one is named
    assert final["val"]["count"] == round(0.2 * (4 + len(odd))) + round(0.2 * 4)
    logged = caplog.text
    assert all(str(path) in logged for path in bad)
    assert not any(f"unreadable image {path}" in logged for path in odd)
    assert load_model(run / "model").config.in_chans == 3
