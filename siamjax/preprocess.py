"""Decode any signature scan and normalise it into the model's input, the same at any resolution.

What this module is for: turning one file (PNG of any mode or bit depth, TIFF, JPEG, BMP, ...) into
the `[height, width]` uint8 image every builder stores, ink HIGH on a background of 0, cropped to
the ink and centred. It follows luizgh/sigver's normalisation (Otsu threshold on a blurred copy,
crop to the ink, remove the background, invert, resize) but every length it uses is a fraction of
the image size instead of a number of pixels, so a 150 dpi and a 600 dpi scan of the same paper
give nearly the same output.

What it is not for: augmentation (that runs on device, `siamjax.augment`) or reading datasets
(the builders in `siamjax.datasets` enumerate files and call `preprocess_bytes`).

Every problem a user can fix (an unreadable, truncated, empty or enormous file, a page without ink)
raises `siamjax.errors.UserError` with one line that names the file.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import scipy.ndimage as ndi
from etils import epath
from PIL import Image

from siamjax.errors import UserError, one_line

# Decompression-bomb limit. A 600 dpi A4 page has 35 megapixels, so 100 megapixels leaves room for
# any real scan while refusing files that would allocate gigabytes (a PNG of a few KB can claim
# 100000 x 100000 pixels). PIL's own limit (`Image.MAX_IMAGE_PIXELS`, about 179 megapixels before
# it raises) still applies on top of this one; both surface as `UserError`.
DEFAULT_MAX_PIXELS = 100_000_000

# Larger images are first shrunk by an integer box average so that their longer side is at most
# this. Normalisation looks at the whole page but the output is ~220 pixels wide; this bounds time
# and memory for huge scans while keeping several input pixels per output pixel for the signature.
WORK_MAX_SIDE = 2400

# Gaussian blur used to find the ink, as a fraction of the image's longer side. sigver blurs with
# sigma = 2 px on ~1360 px canvases (0.0015); we blur a bit more so that dust and paper texture
# fade below the threshold. Being a fraction, the same paper gives the same blur at any dpi.
BLUR_FRACTION = 0.004

# Connected ink regions (of the blurred mask) smaller than this fraction of all ink are "small";
# a small region further than NEAR_FRACTION (of the image's longer side) from the large regions'
# box is dust, not part of the signature, and does not move the crop.
SMALL_COMPONENT_FRACTION = 0.01
NEAR_FRACTION = 0.04

# A dark region lying along the image border, at most BORDER_LINE_THICKNESS of the image across,
# is the edge of the paper or of the scanner's glass (about 2% of CEDAR's scans have one) when it
# is at least BORDER_LINE_LENGTH of the image long (or a small bit along the same side as such an
# edge), is not ink.
BORDER_LINE_THICKNESS = 0.03
BORDER_LINE_LENGTH = 0.15

# Otsu separates any histogram, even that of blank paper. A page has ink only if the mean grey of
# the dark class (of the blurred image) is at least this much below the mean of the light class.
# Measured: the faintest pencil signature of CEDAR and SigComp2011 separates by 25.6; corners of
# those scans without ink separate by 1.2 (median) and 2.2 (90th percentile).
MIN_INK_CONTRAST = 10.0

# Resampling filter from the crop to the output. PIL widens LANCZOS when shrinking, so it averages
# like an area filter while staying sharp.
RESAMPLE = Image.Resampling.LANCZOS

# How ink intensities reach the model (`config.real.ink`). Scanners and pens differ in how dark the
# ink comes out, and a dataset can carry that as a shortcut: SigComp2011's forgeries were scanned
# darker than its genuine signatures, so ink darkness alone separates them. 'raw' keeps each
# pixel's darkness above the ink threshold (the grey levels of the scan); 'normalized' maps each
# image's ink intensities, by rank, onto one fixed distribution (uniform over 1..255), so only the
# order of intensities within an image survives (pressure, stroke edges), not how dark the scan
# was; 'binary' keeps only where the ink is (255) and is not (0).
INK_MODES = ("raw", "normalized", "binary")

# Magic numbers of TIFF files, for the tifffile fallback.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _name_of(path_or_bytes: str | os.PathLike | bytes, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        return "<bytes>"
    return os.fspath(path_or_bytes)


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if int(width) * int(height) > max_pixels:
        raise UserError(
            f"{name}: image of {width}x{height} (width x height) pixels exceeds the limit of "
            f"{max_pixels} pixels (a decompression bomb or an unusually large scan; pass a larger "
            "max_pixels to accept it)"
        )


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    """Grey levels of any PIL image as float32 in [0, 255], transparency flattened onto white.

    Transparent pixels are paper, not ink: a signature cut out onto a transparent background must
    look like one on white paper, whatever colour its transparent pixels happen to store.
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.float32) * (255.0 / 65535.0)
    if mode in ("I", "F"):
        # 32-bit integer (how PIL hands over some 16-bit files) or float pixels: guess the range.
        # NaN is paper and +-Inf the extremes (found by fuzzing: a float TIFF of one NaN pixel).
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=255.0, posinf=1e30, neginf=-1e30)
        top = float(a.max()) if a.size else 0.0
        if mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a * (255.0 / 65535.0)
        return np.clip(a, 0.0, 255.0)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode not in ("L", "RGB", "RGBA", "1"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, P: via RGB to the same luma as below.
    # PIL's ITU-R 601-2 luma, so that an RGB file and its PIL-made greyscale copy agree exactly.
    return np.asarray(im.convert("L"), dtype=np.float32)


def _decode_tifffile(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Fallback for TIFFs PIL cannot read (float samples, odd compressions, many samples)."""
    import tifffile  # Imported here: only odd TIFFs need it.

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            _check_pixels(page.shape[1], page.shape[0], max_pixels, name)
            a = page.asarray()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file.
        raise UserError(f"{name}: cannot decode TIFF ({one_line(e, with_type=True)})") from e
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # Planar (samples first) to samples last.
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) * (255.0 / np.iinfo(a.dtype).max)
    else:
        a = a.astype(np.float32)
        if a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
    if a.ndim == 3:
        alpha = a[..., 3] / 255.0 if a.shape[-1] == 4 else None
        if a.shape[-1] >= 3:
            gray = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
        else:
            gray = a[..., 0]
        if alpha is not None:
            gray = gray * alpha + 255.0 * (1.0 - alpha)
        a = gray
    if a.ndim != 2:
        raise UserError(f"{name}: TIFF with pixel array of shape {a.shape} is not an image")
    return np.clip(np.nan_to_num(a, nan=255.0), 0.0, 255.0).astype(np.float32)


def load_image(
    path_or_bytes: str | os.PathLike | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode one image file into grey levels: float32 [height, width] in [0, 255], 255 = white.

    Accepts a path (local or anything `epath` reads) or the file's bytes; `name` is what error
    messages call the file (default: the path, or "<bytes>"). Decodes everything PIL decodes
    (PNG of any mode and bit depth, TIFF, JPEG, BMP, GIF, ...) and falls back on tifffile for
    TIFFs PIL refuses. Multi-page files give their first page. Raises `UserError` naming the file
    when it is empty, truncated, corrupt, not an image, or larger than `max_pixels`. (Truncation
    is PIL's to detect: it does unless someone set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`.)
    """
    name = _name_of(path_or_bytes, name)
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        try:
            data = epath.Path(path_or_bytes).read_bytes()
        except (FileNotFoundError, IsADirectoryError, PermissionError, OSError) as e:
            raise UserError(f"{name}: cannot read file ({one_line(e, with_type=True)})") from e
    if not data:
        raise UserError(f"{name}: empty file (0 bytes), not an image")

    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; PIL's warning (at ~89 megapixels) would only be noise.
            # (catch_warnings is not thread-safe; from builders' threads the worst is that this
            # narrow "ignore" outlives the call or the warning is printed: neither matters.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        _check_pixels(im.size[0], im.size[1], max_pixels, name)
        im.load()
        return _pil_to_gray(im)
    except UserError:
        raise
    except Image.DecompressionBombError as e:
        raise UserError(
            f"{name}: refused as a decompression bomb ({one_line(e, with_type=True)})"
        ) from e
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        if data[:4] in _TIFF_MAGIC:
            return _decode_tifffile(data, name, max_pixels)
        raise UserError(f"{name}: not a readable image ({one_line(e, with_type=True)})") from e


def otsu_threshold(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold of grey levels in [0, 255] and the distance between the two class means.

    Returns (threshold, contrast): pixels <= threshold are the dark class. Works on a 256-bin
    histogram, as sigver (via scikit-image) does. Contrast is 0 for a uniform image.
    """
    hist = np.bincount(np.clip(np.rint(values), 0, 255).astype(np.int64).ravel(), minlength=256)
    hist = hist.astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * levels)
    m0 = s0 / np.maximum(w0, 1.0)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1.0)
    between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1.0
    t = int(np.argmax(between))
    if between[t] <= 0:
        return 255.0, 0.0
    return float(t), float(m1[t] - m0[t])


def _shrink(gray: np.ndarray, max_side: int) -> np.ndarray:
    factor = -(-max(gray.shape) // max_side)  # Ceiling division.
    if factor <= 1:
        return gray
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _border_sides(rows: slice, cols: slice, h: int, w: int) -> tuple[set[str], bool]:
    """The image sides a dark region lies thinly along, and whether it is long enough to be the
    edge of the paper or of the scanner's glass."""
    thick_y, thick_x = rows.stop - rows.start, cols.stop - cols.start
    thin_x, thin_y = thick_x <= BORDER_LINE_THICKNESS * w, thick_y <= BORDER_LINE_THICKNESS * h
    sides = set()
    if thin_x and cols.start == 0:
        sides.add("left")
    if thin_x and cols.stop == w:
        sides.add("right")
    if thin_y and rows.start == 0:
        sides.add("top")
    if thin_y and rows.stop == h:
        sides.add("bottom")
    long = bool(sides & {"left", "right"}) and thick_y >= BORDER_LINE_LENGTH * h
    long |= bool(sides & {"top", "bottom"}) and thick_x >= BORDER_LINE_LENGTH * w
    return sides, long


def _edges(profile: np.ndarray, start: int, stop: int, threshold: float) -> tuple[float, float]:
    """Sub-pixel positions where `profile` (darkest blurred value per row or column) crosses the
    threshold around the ink run [start, stop).

    Integer box edges jump by a whole pixel, which at 0.5x is most of an output pixel; the
    crossing, interpolated between the last light and the first dark pixel centre, moves
    continuously with the scan, so outputs of different resolutions line up.
    """

    def crossing(outside: int, inside: int) -> float:
        p_out, p_in = float(profile[outside]), float(profile[inside])
        if p_out <= threshold or p_in > threshold:  # Dust in that row, or rounding: stay integer.
            return float(max(outside, inside))
        frac = (p_out - threshold) / (p_out - p_in)  # 0 at the outside centre, 1 at the inside.
        return outside + 0.5 + (inside - outside) * frac

    low = crossing(start - 1, start) if start > 0 else 0.0
    high = crossing(stop, stop - 1) if stop < len(profile) else float(len(profile))
    return low, high


def ink_box(
    gray: np.ndarray, name: str = "<image>"
) -> tuple[tuple[float, float, float, float], float]:
    """Where the signature is: ((top, bottom, left, right), threshold) in sub-pixel coordinates.

    Coordinates are continuous (pixel i spans [i, i + 1)). The ink is what Otsu's threshold on a
    blurred copy calls dark. Blurring (sigma a fraction of the image size) fades dust and paper
    texture; then small dark regions far from the large ones are dropped as dust so they do not
    stretch the box. Raises `UserError` naming `name` when the page has no ink.
    """
    h, w = gray.shape
    sigma = BLUR_FRACTION * max(h, w)
    blurred = ndi.gaussian_filter(gray, sigma=sigma, mode="nearest") if sigma >= 0.3 else gray
    threshold, contrast = otsu_threshold(blurred)
    if contrast < MIN_INK_CONTRAST:
        raise UserError(
            f"{name}: no ink found (blank or uniform page: dark and light parts differ by "
            f"{contrast:.1f} grey levels, at least {MIN_INK_CONTRAST:.0f} needed)"
        )
    mask = blurred <= threshold
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:  # Otsu's threshold below every pixel: found by fuzzing (a 2x1 16-bit PNG).
        raise UserError(f"{name}: no ink found (no pixel is darker than the ink threshold)")
    boxes = ndi.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = areas < SMALL_COMPONENT_FRACTION * areas.sum()
    border = [_border_sides(r, c, h, w) for r, c in boxes]
    edge_sides = set().union(*(sides for sides, long in border if long))
    # Drop edges of the paper, and small bits along the same side that the threshold broke off.
    keep = np.array(
        [
            not (long or (is_small and sides & edge_sides))
            for (sides, long), is_small in zip(border, small, strict=True)
        ],
        dtype=bool,
    )
    if not keep.any():
        keep[:] = True
    large = keep & (areas >= SMALL_COMPONENT_FRACTION * areas[keep].sum())
    if not large.any():
        large = keep
    core = [boxes[i] for i in np.flatnonzero(large)]
    top = min(b[0].start for b in core)
    bottom = max(b[0].stop for b in core)
    left = min(b[1].start for b in core)
    right = max(b[1].stop for b in core)
    # Grow the box by small regions near it until none is left near, so that a chain of small
    # pieces (a broken pencil stroke, the letters of a tiny signature) all count.
    near = NEAR_FRACTION * max(h, w)
    pending = list(np.flatnonzero(keep & ~large))
    grown = True
    while grown and pending:
        grown, rest = False, []
        for i in pending:
            r, c = boxes[i]
            gap_y = max(top - r.stop, r.start - bottom, 0)
            gap_x = max(left - c.stop, c.start - right, 0)
            if max(gap_y, gap_x) <= near:
                top, bottom = min(top, r.start), max(bottom, r.stop)
                left, right = min(left, c.start), max(right, c.stop)
                grown = True
            else:
                rest.append(i)
        pending = rest
    y0, y1 = _edges(blurred[:, left:right].min(axis=1), top, bottom, threshold)
    x0, x1 = _edges(blurred[top:bottom, :].min(axis=0), left, right, threshold)
    return (y0, y1, x0, x1), threshold


def check_ink(ink: str) -> str:
    """`ink` if it is one of INK_MODES; else a UserError naming config.real.ink."""
    if ink not in INK_MODES:
        raise UserError(f"config.real.ink={ink!r}; use one of {INK_MODES}.")
    return ink


def _paper_level(gray: np.ndarray, threshold: float) -> float:
    """The paper's grey level: the median of what is lighter than the ink threshold. It moves with
    the scan's brightness, so filling with it (not pure white) keeps a brighter or darker copy of
    the same scan giving the same input under 'normalized' and 'binary' ink."""
    light = gray[gray > threshold]
    return float(np.median(light)) if light.size else 255.0


def _rank_to_uniform(values: np.ndarray) -> np.ndarray:
    """Each value replaced by its rank among `values` (ties averaged), mapped onto 1..255."""
    if values.size == 0:
        return values
    levels, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # Values strictly below each level.
    mid_rank = below + counts / 2.0  # Ties share the middle of their ranks, in [0, n].
    return 1.0 + 254.0 * mid_rank[inverse.ravel()] / values.size


def normalize(
    gray: np.ndarray, height: int, width: int, *, name: str = "<image>", ink: str = "raw"
) -> np.ndarray:
    """Model input from grey levels: uint8 [height, width], ink high, background 0, centred.

    `gray` is [h, w] (uint8 or float in [0, 255], 255 = white paper), e.g. from `load_image`.
    Crops to the ink (see `ink_box`), scales the crop to fit height x width keeping its aspect
    ratio, centred, then sets everything lighter than the ink threshold to background (so paper
    texture and scanner tint vanish) and inverts. `ink` (INK_MODES) says what the ink pixels keep:
    their darkness ('raw'), its rank within the image ('normalized') or nothing but being ink
    ('binary'). Raises `UserError` naming `name` when there is no ink.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    check_ink(ink)
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim == 3 and gray.shape[-1] == 1:
        gray = gray[..., 0]
    if gray.ndim != 2 or gray.size == 0:
        raise UserError(f"{name}: expected a 2-D greyscale image, got shape {gray.shape}")
    gray = _shrink(gray, WORK_MAX_SIDE)
    (top, bottom, left, right), threshold = ink_box(gray, name)

    # The output canvas, in source coordinates: the box scaled to fit, centred on the box centre.
    box_h, box_w = max(bottom - top, 1.0), max(right - left, 1.0)
    scale = min(height / box_h, width / box_w)
    half_h, half_w = height / scale / 2.0, width / scale / 2.0
    cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
    src = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)  # PIL's (x0, y0, x1, y1).
    # Paper (255) everywhere but the ink box, so that nothing outside the box (dust, other
    # writing, the page edge) reaches the output; the canvas may extend past the image.
    it, ib = int(np.floor(top)), int(np.ceil(bottom))
    il, ir = int(np.floor(left)), int(np.ceil(right))
    oy, ox = min(int(np.floor(src[1])), it), min(int(np.floor(src[0])), il)
    # 'raw' keeps pure white, as every dataset prepared before the ink modes was made.
    fill = 255.0 if ink == "raw" else _paper_level(gray, threshold)
    canvas = np.full(
        (max(int(np.ceil(src[3])), ib) - oy, max(int(np.ceil(src[2])), ir) - ox),
        fill,
        dtype=np.float32,
    )
    canvas[it - oy : ib - oy, il - ox : ir - ox] = gray[it:ib, il:ir]
    # Resample first, remove the background after: the threshold then meets the output's pixels
    # whatever the scan's resolution was; `box` places the crop with sub-pixel precision.
    resized = np.asarray(
        Image.fromarray(canvas).resize(
            (width, height),
            RESAMPLE,
            box=(src[0] - ox, src[1] - oy, src[2] - ox, src[3] - oy),
        ),
        dtype=np.float32,
    )
    is_ink = resized <= threshold
    # 'raw' keeps the darkness against white paper; 'normalized' ranks darkness above the threshold.
    darkness = 255.0 - resized if ink == "raw" else threshold - resized
    return _keep_ink(is_ink, darkness, ink)


def _keep_ink(is_ink: np.ndarray, darkness: np.ndarray, ink: str) -> np.ndarray:
    """Model input: background 0, each ink pixel kept as INK_MODES `ink` says: its `darkness`
    ('raw'), the rank of its darkness within the image on 1..255 ('normalized') or 255
    ('binary'). The one place that says what an ink mode keeps, for scans and generated images."""
    out = np.zeros(is_ink.shape, dtype=np.float32)
    if ink == "raw":
        out[is_ink] = darkness[is_ink]
    elif ink == "binary":
        out[is_ink] = 255.0
    else:
        out[is_ink] = _rank_to_uniform(darkness[is_ink])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def restyle_ink(image: np.ndarray, ink: str) -> np.ndarray:
    """An image already in model-input form (uint8, ink high, background 0) with its ink restyled
    as `normalize` would have kept it: unchanged ('raw'), ranked within the image onto 1..255
    ('normalized') or 255 ('binary'). For images made without a scan (the synthetic writers), so
    that a config's `real.ink` means the same thing whatever the dataset."""
    check_ink(ink)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"restyle_ink takes uint8 model input, got {image.dtype}")
    if ink == "raw":
        return image
    return _keep_ink(image > 0, image.astype(np.float32), ink)


def preprocess_bytes(
    data: bytes, name: str, height: int, width: int, ink: str = "raw"
) -> np.ndarray:
    """Decode and normalise one file's bytes: uint8 [height, width, 1]; errors name `name`."""
    gray = load_image(data, name=name)
    return normalize(gray, height, width, name=name, ink=ink)[..., None]


def preprocess_file(
    path: str | os.PathLike, height: int, width: int, ink: str = "raw"
) -> np.ndarray:
    """Decode and normalise one file: uint8 [height, width, 1], what the builders store."""
    name = os.fspath(path)
    gray = load_image(path, name=name)
    return normalize(gray, height, width, name=name, ink=ink)[..., None]
