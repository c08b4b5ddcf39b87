"""Tests of siamjax.preprocess: decoding of every format users have, errors that name the file,
and a normalisation that gives the same model input whatever the scan's resolution."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from siamjax import preprocess
from siamjax.errors import UserError

H, W = 150, 220


def drawing(scale: float = 1.0, size: tuple[int, int] = (240, 400), seed: int = 0) -> np.ndarray:
    """A made-up signature: a few pen strokes on slightly noisy paper, uint8 [h, w].

    Everything (canvas, coordinates, pen width) scales with `scale`, like a scan at another dpi;
    strokes are drawn 4x larger and reduced, so that they are anti-aliased as a scanner's are.
    """
    h, w = round(size[0] * scale), round(size[1] * scale)
    k = 4 * scale
    im = Image.new("L", (4 * w, 4 * h), 240)
    draw = ImageDraw.Draw(im)
    t = np.linspace(0.0, 1.0, 200)
    strokes = [
        np.stack([60 + 250 * t, 150 - 60 * np.sin(6 * t) - 30 * t], -1),
        np.stack([120 + 30 * np.cos(9 * t), 80 + 70 * t + 15 * np.sin(9 * t)], -1),
        np.stack([90 + 260 * t, 185 - 20 * t], -1),
    ]
    for points in strokes:
        draw.line([tuple(p * k) for p in points], fill=50, width=max(1, round(4 * k)))
    draw.ellipse([s * k for s in (300, 60, 312, 72)], fill=60)  # The dot of an i.
    im = im.resize((w, h), Image.Resampling.BOX)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, (h, w))
    return np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def out(data: bytes, name: str = "x.png") -> np.ndarray:
    return preprocess.preprocess_bytes(data, name, H, W)[..., 0].astype(np.float32)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return drawing()


@pytest.fixture(scope="module")
def gray_out(gray) -> np.ndarray:
    return out(encode(Image.fromarray(gray), "PNG"))


def test_output_is_ink_high_centred_uint8(gray):
    result = preprocess.preprocess_bytes(encode(Image.fromarray(gray), "PNG"), "a.png", H, W)
    assert result.shape == (H, W, 1) and result.dtype == np.uint8
    img = result[..., 0].astype(np.float32)
    # Paper became 0 and ink is high; the crop touches the canvas on the longer side.
    assert img[0, :].max() == 0 or img[:, 0].max() == 0
    assert img.max() > 150 and np.median(img) == 0
    ys, xs = np.nonzero(img)
    assert abs((ys.min() + ys.max()) / 2 - (H - 1) / 2) < 3
    assert abs((xs.min() + xs.max()) / 2 - (W - 1) / 2) < 3
    assert xs.min() <= 2 and xs.max() >= W - 3  # This drawing is wider than 150:220.


def test_preprocess_file_matches_bytes(gray, gray_out, tmp_path):
    path = tmp_path / "sig.png"
    Image.fromarray(gray).save(path)
    np.testing.assert_array_equal(preprocess.preprocess_file(path, H, W)[..., 0], gray_out)


def test_rgb_and_gray_give_the_same_output(gray, gray_out):
    # Ink in blue on a cream paper whose PIL luma is the drawing: the output must not change.
    rgb = Image.fromarray(gray).convert("RGB")
    np.testing.assert_array_equal(out(encode(rgb, "PNG")), gray_out)
    colour = np.asarray(rgb).copy()
    colour[gray < 128] = (20, 30, 200)
    colour_gray = np.asarray(Image.fromarray(colour).convert("L"))
    np.testing.assert_array_equal(
        out(encode(Image.fromarray(colour), "PNG")),
        out(encode(Image.fromarray(colour_gray), "PNG")),
    )


def test_rgba_transparency_is_flattened_onto_white(gray, gray_out):
    # Ink opaque, paper transparent black: black must not count as ink.
    ink = gray < 200
    rgba = np.zeros(gray.shape + (4,), np.uint8)
    rgba[..., :3] = gray[..., None]
    rgba[~ink, :3] = 0
    rgba[..., 3] = np.where(ink, 255, 0)
    flat = np.where(ink, gray, 255).astype(np.uint8)
    np.testing.assert_array_equal(preprocess.load_image(encode(Image.fromarray(rgba), "PNG")), flat)
    # LA (grey + alpha) too.
    la = Image.fromarray(rgba).convert("LA")
    np.testing.assert_array_equal(preprocess.load_image(encode(la, "PNG")), flat)


def test_palette_png_with_and_without_transparency(gray, gray_out):
    pal = Image.fromarray(gray, "L").convert("P")  # PIL keeps a grey palette for L -> P.
    pal_im = Image.frombytes("P", pal.size, gray.tobytes())
    pal_im.putpalette([v for i in range(256) for v in (i, i, i)])
    np.testing.assert_array_equal(out(encode(pal_im, "PNG")), gray_out)
    # Index 0 transparent: those pixels are paper whatever colour the palette gives them.
    arr = gray.copy()
    arr[:10, :10] = 0
    trans = Image.frombytes("P", pal.size, arr.tobytes())
    trans.putpalette([v for i in range(256) for v in (i, i, i)])
    loaded = preprocess.load_image(encode(trans, "PNG", transparency=0))
    assert (loaded[:10, :10] == 255).all()
    np.testing.assert_array_equal(loaded[10:, 10:], gray[10:, 10:])


def test_16_bit_png_keeps_its_levels(gray, gray_out):
    sixteen = gray.astype(np.uint16) * 257
    data = encode(Image.fromarray(sixteen), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    np.testing.assert_allclose(preprocess.load_image(data), gray, atol=1e-3)
    np.testing.assert_array_equal(out(data), gray_out)


@pytest.mark.parametrize(
    "fmt,kwargs,exact",
    [
        ("TIFF", {}, True),
        ("TIFF", {"compression": "tiff_lzw"}, True),
        ("TIFF", {"compression": "tiff_adobe_deflate"}, True),
        ("BMP", {}, True),
        ("JPEG", {"quality": 90}, False),
    ],
)
def test_tiff_bmp_jpeg_round_trips(gray, gray_out, fmt, kwargs, exact):
    for mode in ("L", "RGB"):
        data = encode(Image.fromarray(gray).convert(mode), fmt, **kwargs)
        result = out(data, f"x.{fmt.lower()}")
        if exact:
            np.testing.assert_array_equal(result, gray_out)
        else:
            assert mad(result, gray_out) < 1.0  # JPEG's loss, far below one stroke's weight.


def test_tiff_pil_cannot_read_falls_back_to_tifffile(gray, gray_out):
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, (gray / 255.0).astype(np.float16))  # PIL has no float16 TIFF.
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(buf.getvalue())).load()
    assert mad(out(buf.getvalue(), "x.tif"), gray_out) < 0.5


@pytest.mark.parametrize(
    "data,what",
    [
        (b"", "empty file"),
        (b"img1,img2,target\n001/001_01.PNG,001_forg/0119001_01.png,1\n", "not a readable image"),
    ],
)
def test_empty_and_non_image_files_are_user_errors(tmp_path, data, what):
    path = tmp_path / "broken_01.png"
    path.write_bytes(data)
    with pytest.raises(UserError, match=f"broken_01.png: {what}") as err:
        preprocess.preprocess_file(path, H, W)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_truncated_files_are_user_errors(gray, tmp_path, fmt):
    data = encode(Image.fromarray(gray).convert("RGB"), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError, match=f"cut.{fmt.lower()}: ") as err:
        preprocess.preprocess_file(path, H, W)
    assert "\n" not in str(err.value)


def test_corrupt_png_is_a_user_error(gray, tmp_path):
    data = bytearray(encode(Image.fromarray(gray), "PNG"))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    with pytest.raises(UserError, match="bad.png"):
        preprocess.preprocess_bytes(bytes(data), "bad.png", H, W)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothere.png: cannot read file"):
        preprocess.load_image(tmp_path / "nothere.png")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's trick)."""
    data = bytearray(encode(Image.new("L", (1, 1), 255), "PNG"))
    ihdr = 8 + 8  # Signature, then length + type of the IHDR chunk.
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bombs_are_refused():
    # Over our limit but under PIL's: our check.
    with pytest.raises(
        UserError, match=r"bomb.png: image of 10000x12000 \(width x height\) pixels exceeds"
    ):
        preprocess.load_image(_png_claiming(10000, 12000), name="bomb.png")
    # Over PIL's own limit (it raises before we look): still our error, naming the file.
    with pytest.raises(UserError, match=r"huge.png: "):
        preprocess.load_image(_png_claiming(50000, 50000), name="huge.png")
    # A caller can lower the limit.
    with pytest.raises(UserError, match="exceeds the limit of 1000 pixels"):
        preprocess.load_image(encode(Image.new("L", (40, 40)), "PNG"), max_pixels=1000)


@pytest.mark.parametrize("kind", ["white", "grey", "paper"])
def test_blank_page_is_a_user_error(kind):
    if kind == "paper":
        page = np.clip(np.random.default_rng(1).normal(235, 3, (300, 420)), 0, 255)
    else:
        page = np.full((300, 420), 255 if kind == "white" else 128)
    data = encode(Image.fromarray(page.astype(np.uint8)), "PNG")
    with pytest.raises(UserError, match="blank_7.png: no ink found"):
        preprocess.preprocess_bytes(data, "blank_7.png", H, W)


def test_dust_far_from_the_signature_does_not_move_the_box(gray, gray_out):
    """Black specks of up to 5x5 pixels (each under 1% of the ink) and a faint smudge, in the
    corners and beside the signature, leave the crop where it was."""
    dusty = gray.copy()
    h, w = dusty.shape
    for y, x, r in [
        (8, 8, 2),
        (h - 10, 15, 1),
        (12, w - 12, 2),
        (h - 6, w - 40, 1),
        (h // 2, 5, 2),
    ]:
        dusty[y - r : y + r + 1, x - r : x + r + 1] = 0
    dusty[h - 30 : h - 21, w - 30 : w - 21] = 190
    box = np.array(preprocess.ink_box(gray.astype(np.float32))[0])
    dusty_box = np.array(preprocess.ink_box(dusty.astype(np.float32))[0])
    np.testing.assert_allclose(dusty_box, box, atol=0.01)
    assert mad(out(encode(Image.fromarray(dusty), "PNG")), gray_out) < 0.01


def test_edge_of_the_paper_is_not_ink(gray, gray_out):
    """A scanner's dark border leaves the crop in place; it moves Otsu's threshold a little, so
    the output changes by a fraction of a grey level (observed 0.17), not by a shifted crop (>3)."""
    edged = gray.copy()
    edged[:, -3:] = 30  # Along the right side.
    edged[-2:, : edged.shape[1] // 2] = 40  # And along half of the bottom.
    box = np.array(preprocess.ink_box(gray.astype(np.float32))[0])
    edged_box = np.array(preprocess.ink_box(edged.astype(np.float32))[0])
    np.testing.assert_allclose(edged_box, box, atol=0.5)
    assert mad(out(encode(Image.fromarray(edged), "PNG")), gray_out) < 0.5


def test_same_drawing_at_other_resolutions_gives_nearly_the_same_output(gray_out):
    """Drawn (not resampled) at 0.5x and 2x: pen, canvas and signature scale together.

    Observed MADs (grey levels out of 255): 0.5x 1.7 (its 200x120 crop is enlarged to 220 wide,
    so it is blurrier), 2x 0.6. Bound 2.5: a shift of the whole output by one pixel gives 3.3, and
    an integer-pixel crop (the flaw this guards against) jumps by about that.
    """
    for scale in (0.5, 2.0):
        other = out(encode(Image.fromarray(drawing(scale)), "PNG"))
        assert mad(other, gray_out) < 2.5, scale


def test_resolution_bound_is_not_trivial(gray_out):
    """The bound above means something: a one-pixel shift of the same output exceeds it."""
    assert mad(np.roll(gray_out, 1, axis=1), gray_out) > 2.5


@pytest.mark.realdata
def test_real_rgb_original_and_its_grey_copy_agree(real_data_dir):
    path = real_data_dir / "originals/sigcomp2011/train/021/09_021.png"
    im = Image.open(path)
    assert im.mode == "RGB"
    grey = encode(im.convert("L"), "PNG")
    np.testing.assert_array_equal(out(path.read_bytes()), out(grey))


@pytest.mark.realdata
def test_real_palette_and_rgba_originals_decode(real_data_dir):
    modes = set()
    for path in sorted((real_data_dir / "originals/cedar").rglob("*.png"))[::8]:
        modes.add(Image.open(path).mode)
        result = preprocess.preprocess_file(path, H, W)
        assert result.shape == (H, W, 1) and result.max() > 100
    assert {"P", "RGBA"} <= modes


@pytest.mark.realdata
def test_real_scans_rescaled_give_nearly_the_same_output(real_data_dir):
    """Every 4th file of originals/ (RGB, RGBA, palette PNGs of SigComp2011 and CEDAR), resampled
    by 0.5x and 2x with PIL's LANCZOS, gives nearly the output of the file itself at 150x220.

    Observed over all 152 originals (grey levels out of 255): 0.5x mean MAD 0.38 (median 0.22,
    max 2.8: a faint pencil tail that fades below the threshold at one resolution but not the
    other); 2x mean 0.07 (max 0.64). For scale: two genuine signatures of one writer differ by
    5-6, and a one-pixel shift of one output by ~2.7. Bounds: each file < 4.0 (fails as soon as a
    crop or placement jumps, the flaw of an integer-pixel crop, which gave up to 5.5) and the
    mean < 1.0 at 0.5x, < 0.3 at 2x.
    """
    files = sorted(p for p in (real_data_dir / "originals").rglob("*") if p.is_file())[::4]
    assert len(files) >= 30
    mads: dict[float, list[float]] = {0.5: [], 2.0: []}
    for path in files:
        im = Image.open(path)
        im.load()
        base = out(path.read_bytes(), str(path))
        for scale in mads:
            size = (round(im.width * scale), round(im.height * scale))
            scaled = encode(im.resize(size, Image.Resampling.LANCZOS), "PNG", compress_level=1)
            mads[scale].append(mad(out(scaled, f"{path} x{scale}"), base))
    for scale, values in mads.items():
        worst = int(np.argmax(values))
        assert values[worst] < 4.0, (scale, files[worst], values[worst])
    assert np.mean(mads[0.5]) < 1.0, np.mean(mads[0.5])
    assert np.mean(mads[2.0]) < 0.3, np.mean(mads[2.0])


# ---- Ink modes --------------------------------------------------------------------------------


def _shift_agreement(a: np.ndarray, b: np.ndarray, ink_pixels: int) -> None:
    """`a` and `b` are the same model input up to float32 rounding.

    The blur and the resampling run in float32, so a brighter copy's pixels can differ from the
    original's by a few ulps of 255 (~1e-4 grey levels); a pixel lying that close to the ink
    threshold may fall on its other side. Such pixels are rare, so at most 0.2% of the ink pixels
    may change, and the image as a whole (mean |difference|) by under half a grey level.
    """
    changed = int(np.count_nonzero(np.abs(a.astype(int) - b.astype(int)) > 1))
    assert changed <= max(2, 0.002 * ink_pixels), changed
    assert mad(a, b) < 0.5


@pytest.mark.parametrize("ink", ["normalized", "binary"])
@pytest.mark.parametrize("shift", [-40.0, -15.0, 25.0])
def test_darker_or_lighter_scan_gives_the_same_input(gray, ink, shift):
    # Paper at 212 and ink at 60 (a grey sheet, a dim scanner), so neither end saturates under
    # these shifts: a shift that clips the paper at white or the ink at black is no longer a
    # constant shift of the scan.
    scan = gray.astype(np.float32) * 0.8 + 20.0
    base = preprocess.normalize(scan, H, W, ink=ink)
    moved = preprocess.normalize(scan + shift, H, W, ink=ink)
    _shift_agreement(base, moved, int(np.count_nonzero(base)))
    # Raw ink keeps the scan's darkness, which is what the other modes remove.
    raw_base = preprocess.normalize(scan, H, W, ink="raw")
    raw_moved = preprocess.normalize(scan + shift, H, W, ink="raw")
    ink_mean = [float(r[r > 0].mean()) for r in (raw_base, raw_moved)]
    assert abs(ink_mean[1] - ink_mean[0]) > abs(shift) / 2


def test_ink_modes_keep_the_same_ink_pixels(gray, gray_out):
    raw = preprocess.normalize(gray, H, W, ink="raw")
    np.testing.assert_array_equal(raw, gray_out)  # 'raw' is the default, unchanged.
    binary = preprocess.normalize(gray, H, W, ink="binary")
    normalized = preprocess.normalize(gray, H, W, ink="normalized")
    assert set(np.unique(binary)) == {0, 255}
    # Where the ink is does not depend on the mode: the paper is refilled at its own level
    # rather than white in the other modes, which moves only the faintest edge pixels.
    assert np.mean((binary > 0) != (raw > 0)) < 0.002
    np.testing.assert_array_equal(normalized > 0, binary > 0)


def test_normalized_ink_follows_one_distribution_whatever_the_pen(gray):
    # A pale pencil and a black pen: the same strokes, different darkness and contrast.
    pale = 240.0 - (240.0 - gray.astype(np.float32)) * 0.4
    outs = [preprocess.normalize(g, H, W, ink="normalized") for g in (gray, pale)]
    for o in outs:
        ink = o[o > 0].astype(np.float64)
        # Ranks mapped onto 1..255: the values spread uniformly (mean 128, quartiles 65 and 192).
        assert abs(ink.mean() - 128.0) < 3.0
        np.testing.assert_allclose(np.percentile(ink, [25, 75]), [65.0, 192.0], atol=6.0)
    raw = [preprocess.normalize(g, H, W, ink="raw") for g in (gray, pale)]
    assert abs(float(raw[0][raw[0] > 0].mean()) - float(raw[1][raw[1] > 0].mean())) > 20.0


def test_unknown_ink_mode_is_a_user_error(gray):
    with pytest.raises(UserError, match="config.real.ink"):
        preprocess.normalize(gray, H, W, ink="grey")


def test_restyled_ink_matches_what_normalize_keeps(gray):
    """Model input restyled after the fact (the synthetic writers' images) gets the same ink as
    `normalize` gives a scan: same ink pixels, ranks onto 1..255 or 255."""
    raw = preprocess.normalize(gray, H, W, ink="raw")
    np.testing.assert_array_equal(preprocess.restyle_ink(raw, "raw"), raw)
    binary = preprocess.restyle_ink(raw, "binary")
    np.testing.assert_array_equal(binary, np.where(raw > 0, 255, 0).astype(np.uint8))
    normalized = preprocess.restyle_ink(raw, "normalized")
    np.testing.assert_array_equal(normalized > 0, raw > 0)
    ink = normalized[normalized > 0].astype(np.float64)
    assert abs(ink.mean() - 128.0) < 3.0
    # Darker ink keeps a higher rank: the order of the ink pixels is unchanged.
    order = np.argsort(raw[raw > 0], kind="stable")
    assert np.all(np.diff(normalized[raw > 0][order].astype(int)) >= 0)
    # A pen pressed harder everywhere (every ink level raised, none saturating) gives the same.
    light = np.where(raw > 0, raw // 2 + 1, 0).astype(np.uint8)  # Levels 1..128.
    dark = np.where(raw > 0, light + 100, 0).astype(np.uint8)  # Levels 101..228.
    np.testing.assert_array_equal(
        preprocess.restyle_ink(dark, "normalized"), preprocess.restyle_ink(light, "normalized")
    )
    with pytest.raises(UserError, match="config.real.ink"):
        preprocess.restyle_ink(raw, "grey")
