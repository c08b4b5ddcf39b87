"""siamjax.plots writes valid, small PNG files, also when there is nothing to draw."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamjax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails unless the file starts like a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"  # Complete file.
    return struct.unpack(">II", data[16:24])


def _check(path, min_px: int = 250, max_px: int = 1400, max_bytes: int = 400_000) -> None:
    width, height = _png_size(path)
    assert min_px <= width <= max_px and min_px // 2 <= height <= max_px, (width, height)
    assert 2_000 < path.stat().st_size < max_bytes


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    sig = lambda mu, n: 1 / (1 + np.exp(-rng.normal(mu, 1.5, n)))  # noqa: E731
    return {"genuine": sig(2.0, 300), "skilled": sig(-0.5, 200), "random": sig(-3.0, 200)}


def _signature(seed: int, height: int = 150, width: int = 220) -> np.ndarray:
    """A made-up stroke, ink high on 0, like siamjax's normalised images."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.uint8)
    t = np.linspace(0, 1, 2000)
    x = 20 + (width - 40) * t
    y = height / 2 + 30 * np.sin(2 * np.pi * (2 + rng.random()) * t) * np.cos(7 * t)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            image[np.clip((y + dy).astype(int), 0, height - 1), (x + dx).astype(int)] = 255
    return image


def test_roc_and_det(tmp_path, scores):
    negs = {"skilled": scores["skilled"], "random": scores["random"]}
    plots.plot_roc(tmp_path / "roc.png", scores["genuine"], negs, threshold=0.5)
    plots.plot_det(tmp_path / "sub" / "det.png", scores["genuine"], negs, threshold=0.5)
    _check(tmp_path / "roc.png")
    _check(tmp_path / "sub" / "det.png")


def test_histograms(tmp_path, scores):
    plots.plot_histograms(tmp_path / "hist.png", scores, threshold=0.5)
    _check(tmp_path / "hist.png")


def test_worst_pairs(tmp_path):
    pairs = [
        (_signature(i), _signature(i + 10)[..., None], f"genuine, score {0.1 * i:.2f}")
        for i in range(5)
    ]
    plots.plot_worst_pairs(tmp_path / "worst.png", pairs)
    width, height = _png_size(tmp_path / "worst.png")
    assert width > height  # 2 pairs per row, 3 rows of wide images.
    _check(tmp_path / "worst.png")
    with pytest.raises(ValueError, match="pair 'bad'"):
        plots.plot_worst_pairs(
            tmp_path / "bad.png", [(np.zeros((2, 3, 3), np.uint8), pairs[0][0], "bad")]
        )


def test_nothing_to_draw_still_writes_a_png(tmp_path, scores):
    plots.plot_roc(tmp_path / "a.png", scores["genuine"], {"skilled": [], "random": []})
    plots.plot_det(tmp_path / "b.png", [], {"skilled": scores["skilled"]})
    plots.plot_histograms(tmp_path / "c.png", {"genuine": []})
    plots.plot_worst_pairs(tmp_path / "d.png", [])
    for name in "abcd":
        _check(tmp_path / f"{name}.png", min_px=200, max_bytes=50_000)


def test_import_does_not_load_matplotlib():
    code = "import sys, siamjax.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
