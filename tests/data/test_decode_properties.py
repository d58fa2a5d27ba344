"""Property-based tests of image decoding: whatever bytes a file holds, the readers never crash; a file that
is not a decodable image is skipped with a warning naming it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest

from compact_transformers.data.images import decode_files, read_header

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (the [dev] extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def real_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = real_png()
# random bytes; a real header followed by garbage; a real file truncated or with one byte flipped
CONTENTS = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda tail: PNG[:16] + tail),
    st.integers(min_value=0, max_value=len(PNG) - 1).map(lambda n: PNG[:n]),
    st.tuples(st.integers(min_value=0, max_value=len(PNG) - 1), st.integers(min_value=1, max_value=255)).map(
        lambda pos_xor: PNG[: pos_xor[0]] + bytes([PNG[pos_xor[0]] ^ pos_xor[1]]) + PNG[pos_xor[0] + 1 :]),
)


@SETTINGS
@given(content=CONTENTS, suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]))
def test_random_bytes_never_crash_the_reader(content: bytes, suffix: str, tmp_path: Path, caplog) -> None:
    path = tmp_path / f"file{suffix}"
    path.write_bytes(content)
    good = tmp_path / "good.png"
    good.write_bytes(PNG)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_header(path)
        images, kept = decode_files([path, good], (4, 4), "RGB", workers=1)
    assert 1 in kept and images.shape[0] == len(kept)  # the good file always comes through
    assert images[kept.index(1)].shape == (3, 4, 4)
    if 0 not in kept:
        assert str(path) in caplog.text  # skipped, with a warning naming it
