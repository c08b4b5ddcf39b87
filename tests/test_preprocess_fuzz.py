"""Hostile files through the decode-and-normalise path that the dataset builders and siamjax-verify
share (`preprocess.preprocess_bytes`): the only outcomes are a normalised image or a one-line
`UserError` naming the file; memory stays bounded and no temporary file is left behind.

Cases per strategy: FUZZ_EXAMPLES (default 600: 3000 in all across the five strategies, under
a minute); `SIAMJAX_FUZZ_EXAMPLES=20000 pytest tests/test_preprocess_fuzz.py -s` for a long run.
The run's count and peak memory are printed at the end (`-s`).
"""

import io
import os
import resource
import struct
import tempfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from siamjax import preprocess
from siamjax.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on corrupt EXIF.
FUZZ_EXAMPLES = int(os.environ.get("SIAMJAX_FUZZ_EXAMPLES", "600"))
H, W = 32, 48
NAME = "fuzz/case.bin"
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
# Bound on the peak-RSS growth of the whole fuzz run. The largest image accepted is
# DEFAULT_MAX_PIXELS (100 MP): a header claiming just under it makes PIL allocate the pixels before
# finding the data truncated. Measured under load: see the printed report.
MAX_RSS_GROWTH_MB = 3000

_count = {"cases": 0, "images": 0, "errors": 0}


@pytest.fixture(scope="module", autouse=True)
def _no_temp_files_and_bounded_memory(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_tmp")
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp), str(tmp)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tempfile.tempdir = old_tempdir
    if old_env is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = old_env
    print(
        f"\nfuzz: {_count['cases']} cases ({_count['images']} images, {_count['errors']} "
        f"one-line errors); peak RSS {peak:.0f} MB (before {rss_before:.0f} MB, growth "
        f"{peak - rss_before:.0f} MB)"
    )
    assert os.listdir(tmp) == [], "temporary files left behind"
    assert peak - rss_before < MAX_RSS_GROWTH_MB


def _check(data: bytes) -> None:
    """The property: a normalised image, or a one-line UserError naming the file."""
    _count["cases"] += 1
    try:
        out = preprocess.preprocess_bytes(data, NAME, H, W)
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(NAME + ":"), msg
        _count["errors"] += 1
        return
    assert out.shape == (H, W, 1) and out.dtype == np.uint8
    _count["images"] += 1


# ---- valid images of pure noise in every mode, format and frame count -------------------------

MODES = {  # mode -> formats that can hold it
    "L": ("PNG", "JPEG", "TIFF", "BMP", "GIF"),
    "RGB": ("PNG", "JPEG", "TIFF", "BMP"),
    "RGBA": ("PNG", "TIFF"),
    "LA": ("PNG",),
    "P": ("PNG", "GIF", "BMP"),
    "1": ("PNG", "TIFF", "BMP"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "F": ("TIFF",),
}


@st.composite
def noise_images(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    h, w = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    frames = draw(st.integers(1, 3)) if fmt in ("GIF", "TIFF") else 1
    rng = np.random.default_rng(seed)
    ims = []
    for _ in range(frames):
        if mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        elif mode == "F":
            im = Image.fromarray(rng.random((h, w), dtype=np.float32))
        else:
            channels = {"L": 1, "P": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
            a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            base = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
            im = Image.fromarray(a[..., 0] if channels == 1 else a, base)
            if mode != base:
                im = (
                    im.convert(mode)
                    if mode != "CMYK"
                    else Image.frombytes("CMYK", (w, h), a.tobytes())
                )
        ims.append(im)
    buf = io.BytesIO()
    if frames > 1:
        ims[0].save(buf, fmt, save_all=True, append_images=ims[1:])
    else:
        ims[0].save(buf, fmt)
    return buf.getvalue()


@FUZZ
@given(noise_images())
def test_valid_noise_images(data):
    _check(data)


@FUZZ
@given(noise_images(), st.floats(0.0, 1.0))
def test_truncated_images(data, keep):
    _check(data[: int(len(data) * keep)])


@FUZZ
@given(
    noise_images(),
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_images_with_garbage_bytes(data, flips):
    b = bytearray(data)
    for where, value in flips:
        b[min(int(where * len(b)), len(b) - 1)] = value
    _check(bytes(b))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    _check(data)


# ---- headers that claim huge (or zero) sizes ---------------------------------------------------


def _png_header(w, h, depth, color):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    chunk = lambda kind, body: (
        struct.pack(">I", len(body))
        + kind
        + body  # noqa: E731
        + struct.pack(">I", zlib.crc32(kind + body))
    )
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _tiff_header(w, h, bits):
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),
        (278, 4, 1, h),
        (279, 4, 1, 64),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, typ, n, v)
            if typ == 4
            else struct.pack("<HHIHH", tag, typ, n, v, 0)
            for tag, typ, n, v in entries
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" * 64


def _patch_jpeg(w, h):
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "JPEG")
    b = bytearray(buf.getvalue())
    i = b.index(b"\xff\xc0")
    b[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def _patch_gif(w, h):
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, "GIF")
    b = bytearray(buf.getvalue())
    b[6:10] = struct.pack("<HH", w, h)
    i = b.index(b"\x2c")  # The image descriptor.
    b[i + 5 : i + 9] = struct.pack("<HH", w, h)
    return bytes(b)


SIDE = st.one_of(st.integers(0, 2), st.integers(1, 70_000), st.integers(1, 2**31 - 1))


@FUZZ
@given(
    st.sampled_from(["png", "tiff", "jpeg", "gif"]),
    SIDE,
    SIDE,
    st.sampled_from([1, 8, 16]),
    st.sampled_from([0, 2, 4, 6]),
)
def test_headers_claiming_huge_or_empty_images(kind, w, h, depth, color):
    if kind == "png":
        data = _png_header(w, h, depth if color == 0 else 8, color)
    elif kind == "tiff":
        data = _tiff_header(min(w, 2**32 - 1), min(h, 2**32 - 1), depth)
    elif kind == "jpeg":
        data = _patch_jpeg(min(w, 65535), min(h, 65535))
    else:
        data = _patch_gif(min(w, 65535), min(h, 65535))
    _check(data)


def test_gigapixel_headers_are_refused_without_allocating():
    """Explicit cases: a claimed 10^10-pixel image is refused from its header alone."""
    for data in (
        _png_header(100_000, 100_000, 8, 0),
        _tiff_header(100_000, 100_000, 8),
        _patch_jpeg(65535, 65535),
        _patch_gif(65535, 65535),
    ):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(UserError, match=r"exceeds the limit|decompression bomb"):
            preprocess.preprocess_bytes(data, NAME, H, W)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # < 100 MB


def test_a_two_pixel_16_bit_png_is_a_one_line_error_not_a_crash():
    """Found by this fuzzing: Otsu's threshold fell below both pixels and ink_box crashed."""
    data = _png_header(2, 1, 16, 0)[:33] + bytes.fromhex(
        "0000000d49444154789c638838782d1b0005bf025bed4576480000000049454e44ae426082"
    )
    assert preprocess.load_image(data).shape == (1, 2)
    with pytest.raises(UserError, match="no ink"):
        preprocess.preprocess_bytes(data, NAME, H, W)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e38])
def test_a_float_tiff_of_non_finite_pixels_is_an_image_or_one_line(value):
    """Found by this fuzzing: a NaN pixel reached Otsu's histogram as a negative count."""
    a = np.full((4, 6), 0.9, np.float32)
    a[1:3, 2:4] = value
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "TIFF")
    gray = preprocess.load_image(buf.getvalue())
    assert np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 255
    _check(buf.getvalue())
