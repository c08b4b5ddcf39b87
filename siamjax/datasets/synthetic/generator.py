"""Procedural handwritten signatures: a dataset that ships with the code and needs no download.

What it is for: tests, smoke runs and CPU-sized experiments that need genuine signatures, skilled
forgeries and many writers, deterministically from a seed. What it is not: a stand-in for real
scans when reporting results, and not a TFDS builder (that is `synthetic_dataset_builder.py`
beside it, which only calls `render_dataset`). Pure numpy: no TensorFlow, no JAX.

The generative model, in signature units (1 = the writer's x-height, y up):

* Pen motion (a Hollerbach-style oscillation model). Each pen-down stroke is a chain of
  half-cycles between vertical turning points `ys[k]` (baseline, x-height, ascender, descender),
  with cosine easing in between. The horizontal velocity is a drift `drift[k]` plus a term that
  is zero mid-stroke and sets the horizontal speed at each turning point to `turn[k] * drift`:
  below zero draws a loop (l, e, g), near zero a cusp, above one a round arc (n, u). A further
  term pushes upstrokes right and downstrokes left, which makes downstrokes upright before slant.
* A writer is a fixed choice of these parameters: letters grouped in one to three words (pen
  lifts between them), a large capital, i-dots and t-bars, often a paraph (underline flourish),
  plus a slant, letter width, loopiness, stroke width and a pressure habit (heavier downstrokes,
  tapered starts and ends from a fluent, fast pen).
* A genuine sample perturbs every turning point, width and loop a little and applies a small
  affine jitter (rotation, shear, anisotropic scale) and a stroke-width jitter.
* A skilled forger copies the writer's parameters with a consistent personal bias: a changed slant,
  wrong proportions (ascenders, x-height, letter widths, capital), different loops, a redrawn
  paraph, and a slow, careful execution: tremor (band-limited wobble across the stroke), blunt
  stroke ends, even pressure, hesitation blobs, pen lifts inside words and less fluent, more
  angular curves. Each forgery adds per-sample noise on top of its forger's bias.

Rendering is resolution-independent: the strokes are fitted into the canvas (like a normalised
scan: centred, background 0, ink high), then splatted as anti-aliased discs of the local pen
radius, so the same seed gives the same signature at 64x96 and at 150x220.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np

from siamjax import preprocess


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the generated dataset depends on, passed as one value from the config to the
    renderer (the TFDS builder names its config after it): same settings, same images."""

    num_writers: int  # Distinct writers, w0000 ...
    genuine_per_writer: int
    forgeries_per_writer: int  # Skilled forgeries per writer ...
    forgers_per_writer: int  # ... made in turn by this many forgers of that writer.
    height: int  # Output image size in pixels.
    width: int
    seed: int
    # FORGERY_STYLES: 'tremor' (a slow, shaky copy whose execution gives it away alone) or
    # 'skilled' (a practised forger: the writer's shape kept, small errors of proportion and
    # slant, a little hesitation), so that telling it apart needs the reference.
    forgery_style: str = "tremor"
    # How the ink is kept (siamjax.preprocess.INK_MODES, the config's `real.ink`): rendered
    # pressure ('raw'), its rank within the image ('normalized') or on/off ('binary').
    ink: str = "raw"


FORGERY_STYLES = ("tremor", "skilled")
# 'skilled' forgers: how much of a 'tremor' forger's execution artefacts (tremor, hesitation
# blobs and stops, pen lifts, angular curves) and of its shape errors (slant; proportions, as
# factors' distance from 1 in log space; pen width) remain.
SKILLED_EXECUTION = 0.25
SKILLED_SHAPE = 0.5


# Points per half-cycle when the pen trajectory is built; rendering resamples by arc length.
_STEPS = 24
# Rendered spacing of pen positions, in output pixels (denser than a pixel: no gaps).
_SPACING_PX = 0.5
# Genuine sample-to-sample variation of the whole signature (forgeries get 1.3x): std of rotation
# and shear in degrees and of log-scale per axis, the smallest fraction of the canvas it fills, and
# the fraction of the leftover canvas its centre may wander over.
# Forgeries vary more from sample to sample than genuine signatures, by this factor.
_FORGERY_NOISE = 1.3
_JITTER = {"rotation_deg": 1.0, "shear_deg": 1.5, "scale": 0.03, "fill": 0.88, "shift": 0.15}


@dataclasses.dataclass
class Word:
    """One pen-down stroke, as the oscillation model's parameters (signature units).

    `ys` has one entry per turning point [k + 1]; `turn` too; `drift` has one per half-cycle [k].
    """

    ys: np.ndarray
    turn: np.ndarray
    drift: np.ndarray
    x0: float
    y0: float
    upright: float  # How strongly upstrokes go right and downstrokes left (0 = symmetric zigzag).


@dataclasses.dataclass
class Mark:
    """A short separate stroke (i-dot, t-bar) or a paraph, as Bezier control points [4, 2]."""

    ctrl: np.ndarray
    attach: int  # Index of the word it belongs to (moves with that word); -1: the whole signature.


@dataclasses.dataclass
class Writer:
    """Everything that makes one writer's signature theirs."""

    words: list[Word]
    marks: list[Mark]
    slant: float  # Shear angle in radians (positive leans right).
    width: float  # Pen diameter in signature units.
    pressure: float  # How much heavier downstrokes are than upstrokes.
    taper: float  # Arc length over which a stroke starts and ends thin (fluent pen).
    speed_ink: float  # How much lighter the ink is where the pen moves fast.
    baseline_curve: float  # Bow of the baseline across the signature.
    rotation: float  # Habitual tilt of the whole signature, radians.


@dataclasses.dataclass
class Forger:
    """One forger's consistent way of getting a writer's signature wrong."""

    slant: float  # Added to the writer's slant, radians.
    ascender: float  # Scale of everything above the x-height (and capitals).
    descender: float  # Scale of everything below the baseline.
    xheight: float  # Scale of the small letters.
    letter_width: float  # Scale of the horizontal drift.
    loop: float  # Scale of the loop/arc speeds at turning points.
    width: float  # Pen diameter relative to the writer's.
    tremor: float  # Amplitude of the wobble, signature units.
    tremor_wavelength: float  # Its wavelength along the stroke, signature units.
    blobs: float  # Hesitation blobs per signature unit of stroke length.
    stops: float  # Probability of a hesitation blob where the pen turns sharply.
    breaks: float  # Pen lifts inside a word per signature unit of stroke length.
    angular: float  # Blend towards a polyline through sparse points (0 = the fluent curve).
    bias_seed: int  # Seeds the forger's fixed errors on individual turning points.


# ---------------------------------------------------------------------------------------------
# Writers and forgers


def _rng(seed: int, *path: int) -> np.random.Generator:
    """An independent stream per (seed, writer, kind, index): adding writers changes no others."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(p) for p in path]])


# Letter shapes as (height, turn) of the turning points after the current low: a high then a low.
# Heights: 1 = x-height, "A" = ascender, "D" = descender. Turn: <0 loop, ~0 cusp, >0 round.
_LETTERS = {
    "n": [("x", "round"), (0.0, "cusp")],
    "m": [("x", "round"), (0.0, "cusp"), ("x", "round"), (0.0, "cusp")],
    "u": [("x", "cusp"), (0.0, "round")],
    "e": [("e", "loop"), (0.0, "round")],
    "l": [("A", "loop"), (0.0, "round")],
    "t": [("T", "cusp"), (0.0, "round")],
    "i": [("x", "cusp"), (0.0, "round")],
    "o": [("x", "oval"), (0.0, "cusp"), ("x", "cusp"), (0.0, "round")],
    "d": [("x", "oval"), (0.0, "cusp"), ("A", "cusp"), (0.0, "round")],
    "g": [("x", "oval"), ("D", "loop"), ("x", "cusp"), (0.0, "round")],
    "y": [("x", "cusp"), ("D", "loop"), ("x", "cusp"), (0.0, "round")],
    "r": [("x", "cusp"), ("x2", "round"), (0.0, "cusp")],
}
_LETTER_NAMES = list(_LETTERS)
_LETTER_FREQ = np.array([6, 4, 5, 8, 5, 4, 5, 5, 3, 2, 2, 4], float)


def _turn_value(kind: str, rng: np.random.Generator, loopiness: float, roundness: float) -> float:
    if kind == "loop":
        return -loopiness * rng.uniform(0.6, 1.3)
    if kind == "oval":
        return -loopiness * rng.uniform(1.6, 2.4)
    if kind == "cusp":
        return rng.uniform(-0.15, 0.2)
    return roundness * rng.uniform(0.8, 1.3)


def _height_value(h, rng: np.random.Generator, asc: float, desc: float) -> float:
    if isinstance(h, float):
        return h + rng.uniform(-0.08, 0.05)
    return {
        "x": rng.uniform(0.9, 1.1),
        "x2": rng.uniform(0.95, 1.2),
        "e": rng.uniform(0.7, 0.95),
        "A": asc * rng.uniform(0.9, 1.1),
        "T": asc * rng.uniform(0.7, 0.85),
        "D": -desc * rng.uniform(0.9, 1.1),
    }[h]


def _make_word(
    rng: np.random.Generator, n_letters: int, capital: bool, style: dict, x0: float
) -> tuple[Word, list[tuple[int, str]]]:
    """Draws a word; returns it and (turning-point index, letter) of letters that need a mark."""
    ys, turn, drift = [rng.uniform(-0.1, 0.4)], [style["roundness"]], []
    needs_mark = []
    c0 = style["drift"]
    if capital:
        # A capital: a tall entry loop or oval, sometimes with a lead-in from below.
        cap_h = style["asc"] * rng.uniform(1.2, 1.5)
        ys += [cap_h, rng.uniform(-0.2, 0.2)]
        cap_kind = rng.choice(["loop", "oval", "cusp"], p=[0.45, 0.35, 0.2])
        turn += [_turn_value(str(cap_kind), rng, style["loopiness"] * 1.4, 1.0), style["roundness"]]
        drift += [c0 * rng.uniform(1.0, 1.8), c0 * rng.uniform(1.0, 1.8)]
    probs = _LETTER_FREQ / _LETTER_FREQ.sum()
    for _ in range(n_letters):
        name = _LETTER_NAMES[rng.choice(len(_LETTER_NAMES), p=probs)]
        width = rng.uniform(0.8, 1.25)
        for h, kind in _LETTERS[name]:
            ys.append(_height_value(h, rng, style["asc"], style["desc"]))
            turn.append(_turn_value(kind, rng, style["loopiness"], style["roundness"]))
            drift.append(c0 * width * (0.6 if kind == "oval" else 1.0))
        if name in ("i", "t"):
            needs_mark.append((len(ys) - 2, name))
    # End stroke: a short exit upstroke.
    ys.append(rng.uniform(0.3, 0.9))
    turn.append(style["roundness"])
    drift.append(c0 * rng.uniform(0.8, 1.4))
    word = Word(
        ys=np.array(ys),
        turn=np.array(turn),
        drift=np.array(drift),
        x0=x0,
        y0=0.0,
        upright=style["upright"],
    )
    return word, needs_mark


def _word_path(word: Word) -> np.ndarray:
    """The pen trajectory of one word, [n, 2] in signature units, from the oscillation model."""
    k = len(word.drift)
    t = np.linspace(0.0, k, k * _STEPS + 1)
    i = np.minimum(t.astype(int), k - 1)
    s = t - i
    ease = (1.0 - np.cos(np.pi * s)) / 2.0
    y = word.ys[i] + (word.ys[i + 1] - word.ys[i]) * ease
    # Drift interpolated between half-cycle midpoints so the pen never jerks sideways.
    c = np.interp(t, np.arange(k) + 0.5, word.drift)
    # Around turning point j the horizontal speed is drift * turn[j]; zero effect mid-stroke.
    j = np.rint(t).astype(int)
    c_at = np.interp(j, np.arange(k) + 0.5, word.drift)
    w_turn = c_at * (word.turn[j] - 1.0) * np.cos(np.pi * (t - j))
    direction = np.sign(word.ys[i + 1] - word.ys[i])
    w_up = word.upright * c * direction * np.sin(np.pi * s) ** 2
    vx = c + w_turn + w_up
    x = word.x0 + np.concatenate([[0.0], np.cumsum((vx[1:] + vx[:-1]) / 2.0 * np.diff(t))])
    return np.stack([x, y + word.y0], axis=1)


def _bezier(ctrl: np.ndarray, n: int = 40) -> np.ndarray:
    """Cubic Bezier through control points [4, 2] -> [n, 2]."""
    u = np.linspace(0.0, 1.0, n)[:, None]
    b = [(1 - u) ** 3, 3 * u * (1 - u) ** 2, 3 * u**2 * (1 - u), u**3]
    return sum(bi * ctrl[m] for m, bi in enumerate(b))


def make_writer(seed: int, writer: int) -> Writer:
    """Draws writer `writer`'s signature template; the same (seed, writer) gives the same one."""
    rng = _rng(seed, writer, 0)
    style = {
        "drift": rng.uniform(0.45, 0.75),
        "loopiness": rng.uniform(0.5, 1.3),
        "roundness": rng.uniform(0.7, 1.6),
        "asc": rng.uniform(1.9, 2.8),
        "desc": rng.uniform(1.0, 1.7),
        "upright": rng.uniform(0.3, 0.9),
    }
    n_words = int(rng.choice([1, 2, 3], p=[0.35, 0.55, 0.1]))
    words, marks = [], []
    x = 0.0
    for w in range(n_words):
        initial_only = w < n_words - 1 and rng.random() < (0.4 if w == 0 else 0.8)
        n_letters = 0 if initial_only else int(rng.integers(3, 7 if n_words == 1 else 5))
        capital = w == 0 or rng.random() < 0.7
        word, needs = _make_word(rng, n_letters, capital, style, x)
        word.y0 = rng.uniform(-0.25, 0.25)
        path = _word_path(word)
        for turn_index, name in needs:
            top = path[turn_index * _STEPS]
            if name == "i":
                p = top + [0.25 * rng.uniform(-1, 1) + 0.1, rng.uniform(0.6, 1.0)]
                d = rng.normal(size=2) * 0.06 + [0.08, 0.02]
                ctrl = np.stack([p, p + d / 3, p + 2 * d / 3, p + d])
            else:
                p = top + [-0.45 * rng.uniform(0.7, 1.3), -0.45 * style["asc"] / 2.2]
                d = np.array([rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.15)])
                ctrl = np.stack([p, p + d / 3, p + 2 * d / 3 + [0, 0.05], p + d])
            marks.append(Mark(ctrl=ctrl, attach=w))
        if initial_only and rng.random() < 0.6:
            p = path[-1] + [0.3, -path[-1][1] + 0.05]
            ctrl = np.stack([p, p + [0.03, 0.01], p + [0.05, 0.0], p + [0.06, 0.02]])
            marks.append(Mark(ctrl=ctrl, attach=w))
        words.append(word)
        x = path[:, 0].max() + rng.uniform(0.6, 1.4)
    if rng.random() < 0.6:
        # Paraph: a sweeping underline from the end of the signature back under it.
        x_end = x - 0.6
        x_start = rng.uniform(-0.8, 0.5)
        depth = -style["desc"] * rng.uniform(0.9, 1.4)
        if rng.random() < 0.5:
            ctrl = np.array(
                [
                    [x_end + rng.uniform(0, 0.6), rng.uniform(0.2, 0.8)],
                    [x_end + rng.uniform(0.5, 1.5), depth * rng.uniform(0.8, 1.4)],
                    [(x_end + x_start) / 2, depth * rng.uniform(1.0, 1.4)],
                    [x_start, depth * rng.uniform(0.3, 0.9)],
                ]
            )
        else:
            ctrl = np.array(
                [
                    [x_start, depth * rng.uniform(0.7, 1.0)],
                    [(x_end + x_start) * rng.uniform(0.2, 0.4), depth * rng.uniform(1.0, 1.5)],
                    [(x_end + x_start) * rng.uniform(0.6, 0.8), depth * rng.uniform(0.6, 1.1)],
                    [x_end + rng.uniform(0.2, 1.0), depth * rng.uniform(0.1, 0.6)],
                ]
            )
        marks.append(Mark(ctrl=ctrl, attach=-1))
    return Writer(
        words=words,
        marks=marks,
        slant=np.deg2rad(rng.uniform(-10.0, 35.0)),
        width=rng.uniform(0.11, 0.2),
        pressure=rng.uniform(0.6, 1.1),
        taper=rng.uniform(0.3, 0.7),
        speed_ink=rng.uniform(0.2, 0.45),
        baseline_curve=rng.normal(0.0, 0.15),
        rotation=np.deg2rad(rng.normal(0.0, 3.0)),
    )


def make_forger(seed: int, writer: int, forger: int, style: str = "tremor") -> Forger:
    """Draws forger `forger` (index within the writer) of writer `writer`, of `style`
    (FORGERY_STYLES); both styles draw the same random numbers, 'skilled' scales them down."""
    if style not in FORGERY_STYLES:
        raise ValueError(f"forgery style {style!r}; use one of {FORGERY_STYLES}")
    forger_ = _draw_forger(seed, writer, forger)
    if style == "tremor":
        return forger_
    e, s = SKILLED_EXECUTION, SKILLED_SHAPE
    return dataclasses.replace(
        forger_,
        slant=forger_.slant * s,
        ascender=forger_.ascender**s,
        descender=forger_.descender**s,
        xheight=forger_.xheight**s,
        letter_width=forger_.letter_width**s,
        loop=forger_.loop**s,
        width=forger_.width**s,
        tremor=forger_.tremor * e,
        blobs=forger_.blobs * e,
        stops=forger_.stops * e,
        breaks=forger_.breaks * e,
        angular=forger_.angular * e,
    )


def _draw_forger(seed: int, writer: int, forger: int) -> Forger:
    rng = _rng(seed, writer, 1, forger)

    def away(lo: float, hi: float) -> float:
        """A factor in [1/hi, 1/lo] or [lo, hi]: wrong, in either direction."""
        f = rng.uniform(lo, hi)
        return f if rng.random() < 0.5 else 1.0 / f

    return Forger(
        slant=np.deg2rad(rng.uniform(6.0, 14.0)) * rng.choice([-1.0, 1.0]),
        ascender=away(1.12, 1.35),
        descender=away(1.1, 1.35),
        xheight=away(1.05, 1.25),
        letter_width=away(1.08, 1.25),
        loop=away(1.2, 1.6),
        width=rng.uniform(0.72, 0.92),
        tremor=rng.uniform(0.03, 0.05),
        tremor_wavelength=rng.uniform(0.45, 0.8),
        blobs=rng.uniform(0.05, 0.15),
        stops=rng.uniform(0.3, 0.7),
        breaks=rng.uniform(0.04, 0.08),
        angular=rng.uniform(0.1, 0.35),
        bias_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------------
# Samples: perturbed parameters -> strokes with pen radius and ink


@dataclasses.dataclass
class Stroke:
    """A pen-down stroke ready to render: points [n, 2], pen diameter [n] and ink [n] in [0, 1]."""

    points: np.ndarray
    width: np.ndarray
    ink: np.ndarray


def _perturb_word(word: Word, rng: np.random.Generator, amount: float) -> Word:
    k = len(word.drift)
    return Word(
        ys=word.ys + rng.normal(0.0, 0.05 * amount, k + 1) * np.maximum(np.abs(word.ys), 0.5),
        turn=word.turn + rng.normal(0.0, 0.12 * amount, k + 1),
        # Mostly one stretch for the word, little per letter: letters keep their relative widths.
        drift=word.drift
        * np.exp(rng.normal(0.0, 0.04 * amount) + rng.normal(0.0, 0.03 * amount, k)),
        x0=word.x0 + rng.normal(0.0, 0.05 * amount),
        y0=word.y0 + rng.normal(0.0, 0.05 * amount),
        upright=word.upright,
    )


def _forge_word(word: Word, forger: Forger, rng: np.random.Generator) -> Word:
    """The forger's fixed misreading of a word: proportions, widths, loops, point errors."""
    ys = word.ys.copy()
    up, down = ys > 1.3, ys < -0.3
    ys[up] = 1.0 + (ys[up] - 1.0) * forger.ascender
    ys[down] *= forger.descender
    mid = ~up & ~down
    ys[mid] *= forger.xheight
    k = len(word.drift)
    ys += rng.normal(0.0, 0.1, k + 1) * np.maximum(np.abs(ys), 0.5)
    turn = word.turn.copy()
    turn = np.where(turn < 0.5, turn * forger.loop, turn) + rng.normal(0.0, 0.15, k + 1)
    return Word(
        ys=ys,
        turn=turn,
        drift=word.drift * forger.letter_width * np.exp(rng.normal(0.0, 0.08, k)),
        x0=word.x0 * forger.letter_width,
        y0=word.y0 + rng.normal(0.0, 0.1),
        upright=word.upright * rng.uniform(0.6, 1.0),
    )


def _arc_length(p: np.ndarray) -> np.ndarray:
    seg = np.hypot(*np.diff(p, axis=0).T)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _resample(p: np.ndarray, step: float) -> np.ndarray:
    s = _arc_length(p)
    n = max(int(np.ceil(s[-1] / step)), 1) + 1
    u = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(u, s, p[:, 0]), np.interp(u, s, p[:, 1])], axis=1)


def _normals(p: np.ndarray) -> np.ndarray:
    d = np.gradient(p, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1])[:, None], 1e-9)
    return np.stack([-d[:, 1], d[:, 0]], axis=1)


def _smooth_noise(rng: np.random.Generator, s: np.ndarray, wavelength: float, n: int = 4):
    """Band-limited noise along arc length s [n]: a few sinusoids near 1/wavelength, unit RMS."""
    f = rng.uniform(0.7, 1.4, n) / wavelength
    ph = rng.uniform(0, 2 * np.pi, n)
    a = rng.uniform(0.5, 1.0, n)
    out = (a[:, None] * np.sin(2 * np.pi * f[:, None] * s[None] + ph[:, None])).sum(0)
    return out / np.sqrt((a**2).sum() / 2)


def _pen_profile(
    p: np.ndarray, taper: float, pressure: float, speed_ink: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Relative pen width and ink along a stroke [n]: tapered ends, heavier downstrokes.

    A fast, fluent pen starts and ends in the air (`taper` long), presses on downstrokes and
    leaves less ink where it moves fast (`speed_ink`: upstrokes and ends are lighter).
    """
    s = _arc_length(p)
    total = s[-1]
    ramp = np.minimum(1.0, np.minimum(s, total - s) / max(taper, 1e-6))
    ends = 0.35 + 0.65 * np.sin(np.pi / 2 * ramp)
    d = np.gradient(p, axis=0)
    down = -d[:, 1] / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    slow = _smooth_noise(rng, s, 2.0, 2) * 0.08
    press = np.maximum(1.0 + pressure * 0.5 * down + slow, 0.3)
    width = ends * press
    fast = 0.5 - 0.5 * down + 0.5 * (1.0 - ends)
    ink = np.clip(1.0 - speed_ink * fast + 0.5 * slow, 0.35, 1.0)
    return width, ink


def _signature_strokes(
    writer: Writer, rng: np.random.Generator, forger: Forger | None
) -> tuple[list[Stroke], float]:
    """Strokes of one sample in signature units, before the affine jitter; and its pen width."""
    if forger is None:
        words = [_perturb_word(w, rng, 1.0) for w in writer.words]
    else:
        bias = np.random.default_rng(forger.bias_seed)
        words = [
            _perturb_word(_forge_word(w, forger, bias), rng, _FORGERY_NOISE) for w in writer.words
        ]
    strokes: list[np.ndarray] = []
    shifts = []
    for w0, w in zip(writer.words, words, strict=True):
        path = _word_path(w)
        strokes.append(path)
        # Marks follow their word's displacement (of its start) so i-dots stay above their i.
        shifts.append(path[0] - _word_path(w0)[0] if forger is None else path[0] - [w0.x0, 0])
    mark_noise = 0.04 if forger is None else 0.12
    for m in writer.marks:
        ctrl = m.ctrl.copy()
        if m.attach >= 0 and forger is None:
            ctrl += shifts[m.attach]
        elif forger is not None:
            if m.attach >= 0:
                ctrl[:, 0] *= forger.letter_width
                ctrl[:, 1] = np.where(
                    ctrl[:, 1] > 1.3, 1 + (ctrl[:, 1] - 1) * forger.ascender, ctrl[:, 1]
                )
            else:
                ctrl[:, 0] *= forger.letter_width
                bias = np.random.default_rng(forger.bias_seed + 1)
                ctrl += bias.normal(0.0, 0.25, ctrl.shape)
        ctrl += rng.normal(0.0, mark_noise, ctrl.shape)
        strokes.append(_bezier(ctrl, 48 if m.attach < 0 else 8))

    width = writer.width * np.exp(rng.normal(0.0, 0.07))
    taper, pressure, speed_ink = writer.taper, writer.pressure, writer.speed_ink
    out: list[Stroke] = []
    if forger is not None:
        width *= forger.width
        taper, pressure, speed_ink = 0.06, writer.pressure * 0.3, 0.05
    for raw in strokes:
        pts = _resample(raw, 0.02)
        if forger is not None:
            pieces = _forgery_execution(pts, forger, rng)
        else:
            pieces = [(pts, None)]
        for p, blobs in pieces:
            if len(p) < 2:
                continue
            wid, ink = _pen_profile(p, taper, pressure, speed_ink, rng)
            if blobs is not None:
                wid = wid * blobs
                ink = np.clip(ink * np.sqrt(blobs), 0.0, 1.0)
            out.append(Stroke(points=p, width=wid * width, ink=ink))
    return out, width


def _forgery_execution(
    p: np.ndarray, forger: Forger, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A slow copy of a stroke [n, 2]: angular, trembling, with hesitation blobs and pen lifts."""
    s = _arc_length(p)
    total = s[-1]
    # Less fluent: blend towards a polyline through points every ~0.35 units.
    if forger.angular > 0 and total > 0.5:
        knots = np.linspace(0.0, total, max(int(total / 0.35), 2) + 1)
        kx, ky = np.interp(knots, s, p[:, 0]), np.interp(knots, s, p[:, 1])
        poly = np.stack([np.interp(s, knots, kx), np.interp(s, knots, ky)], axis=1)
        p = (1 - forger.angular) * p + forger.angular * poly
    smooth = p
    # Tremor across the stroke, its amplitude wandering slowly.
    envelope = 0.6 + 0.4 * _smooth_noise(rng, s, 3.0, 2) ** 2
    wobble = forger.tremor * envelope * _smooth_noise(rng, s, forger.tremor_wavelength)
    p = p + _normals(p) * wobble[:, None]
    # Hesitation blobs: the pen rests and the ink spreads; a slow copyist rests where it turns.
    blob = np.ones_like(s)
    heading = np.unwrap(np.arctan2(*np.gradient(smooth, axis=0).T[::-1]))
    curvature = np.abs(np.gradient(heading)) / np.maximum(np.gradient(s), 1e-9)
    turns = np.nonzero(
        (curvature > 5.0)
        & (curvature >= np.roll(curvature, 1))
        & (curvature >= np.roll(curvature, -1))
    )[0]
    for i in turns[rng.random(len(turns)) < forger.stops]:
        blob += rng.uniform(0.4, 0.9) * np.exp(-0.5 * ((s - s[i]) / 0.05) ** 2)
    n_blobs = rng.poisson(forger.blobs * total)
    for c in rng.uniform(0.0, total, n_blobs):
        blob += rng.uniform(0.6, 1.1) * np.exp(-0.5 * ((s - c) / 0.05) ** 2)
    blob += 0.6 * np.exp(-0.5 * (s / 0.04) ** 2)  # Pen put down deliberately.
    # Pen lifts: cut the stroke, restart a little off.
    n_breaks = rng.poisson(forger.breaks * total)
    cuts = np.sort(rng.uniform(0.15 * total, 0.85 * total, n_breaks))
    pieces = []
    start = 0
    offset = np.zeros(2)
    for c in cuts:
        i = int(np.searchsorted(s, c))
        gap = i + int(rng.uniform(0.1, 0.2) / 0.02)
        if i - start < 3 or gap >= len(s) - 3:
            continue
        pieces.append((p[start:i] + offset, blob[start:i]))
        offset = offset + rng.normal(0.0, 0.03, 2)
        blob[gap : gap + 4] += 0.5
        start = gap
    pieces.append((p[start:] + offset, blob[start:]))
    return pieces


# ---------------------------------------------------------------------------------------------
# Rendering


def _splat(height: int, width: int, pts: np.ndarray, radius: np.ndarray, ink: np.ndarray):
    """Anti-aliased discs of `radius` px at `pts` [n, 2] (x, y in px) -> coverage [h, w] float."""
    r = int(np.ceil(radius.max() + 1.0))
    off = np.arange(-r, r + 1)
    cx = np.rint(pts[:, 0]).astype(np.int64)
    cy = np.rint(pts[:, 1]).astype(np.int64)
    px = cx[:, None, None] + off[None, None, :]
    py = cy[:, None, None] + off[None, :, None]
    fx = (px - pts[:, 0, None, None]).astype(np.float32)
    fy = (py - pts[:, 1, None, None]).astype(np.float32)
    dist = np.sqrt(fx * fx + fy * fy)
    rad = radius.astype(np.float32)[:, None, None]
    cov = np.minimum(rad + 0.5 - dist, np.minimum(1.0, 2.0 * rad))
    cov *= ink.astype(np.float32)[:, None, None]
    px, py = np.broadcast_to(px, cov.shape), np.broadcast_to(py, cov.shape)
    keep = (cov > 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
    out = np.zeros(height * width, np.float32)
    np.maximum.at(out, (py[keep] * width + px[keep]), cov[keep])
    return out.reshape(height, width)


def _render(
    strokes: list[Stroke],
    writer: Writer,
    slant: float,
    height: int,
    width: int,
    rng: np.random.Generator,
    jitter: float,
    pen_px_per_unit: float | None = None,
) -> np.ndarray:
    """Affine jitter, fit to the canvas like a normalised scan, splat -> [height, width, 1] uint8.

    The pen's width in pixels follows this sample's own fit unless `pen_px_per_unit` is given: a
    forger copies the reference's overall size with a similar pen, so after normalisation their
    strokes are as thick as the writer's even where their proportions (and hence fit) differ.
    """
    rot = writer.rotation + rng.normal(0.0, np.deg2rad(_JITTER["rotation_deg"]) * jitter)
    sh = np.tan(slant + rng.normal(0.0, np.deg2rad(_JITTER["shear_deg"]) * jitter))
    sx, sy = np.exp(rng.normal(0.0, _JITTER["scale"] * jitter, 2))
    a = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    a = a @ np.array([[sx, sh * sy], [0.0, sy]])
    all_pts = np.concatenate([st.points for st in strokes])
    x_mid = (all_pts[:, 0].min() + all_pts[:, 0].max()) / 2
    x_half = max((all_pts[:, 0].max() - all_pts[:, 0].min()) / 2, 1e-6)
    transformed = []
    for st in strokes:
        p = st.points.copy()
        p[:, 1] += writer.baseline_curve * (1 - ((p[:, 0] - x_mid) / x_half) ** 2)
        transformed.append(p @ a.T)
    pen_scale = np.sqrt(abs(np.linalg.det(a)))
    q = np.concatenate(transformed)
    pad = max(st.width.max() for st in strokes) * pen_scale / 2
    lo, hi = q.min(0) - pad, q.max(0) + pad
    margin = 0.05
    fill = rng.uniform(_JITTER["fill"], 1.0)
    scale = fill * min(
        width * (1 - 2 * margin) / (hi[0] - lo[0]), height * (1 - 2 * margin) / (hi[1] - lo[1])
    )
    # Centre with a little slack, then flip y (image rows grow downwards).
    slack = np.array([width, height]) - scale * (hi - lo)
    centre = np.array([width, height]) / 2 + rng.uniform(-0.5, 0.5, 2) * slack * _JITTER["shift"]
    mid = (lo + hi) / 2
    pts_list, rad_list, ink_list = [], [], []
    for p, st in zip(transformed, strokes, strict=True):
        px = (p - mid) * scale
        px = np.stack([centre[0] + px[:, 0], centre[1] - px[:, 1]], axis=1) - 0.5
        # Resample densely in pixels so discs overlap whatever the resolution.
        s = _arc_length(px)
        n = max(int(np.ceil(s[-1] / _SPACING_PX)), 1) + 1
        u = np.linspace(0.0, s[-1], n)
        pts_list.append(np.stack([np.interp(u, s, px[:, 0]), np.interp(u, s, px[:, 1])], 1))
        px_per_unit = pen_scale * scale if pen_px_per_unit is None else pen_px_per_unit
        rad_list.append(np.interp(u, s, st.width) * px_per_unit / 2)
        ink_list.append(np.interp(u, s, st.ink))
    cov = _splat(
        height, width, np.concatenate(pts_list), np.concatenate(rad_list), np.concatenate(ink_list)
    )
    return np.rint(np.clip(cov, 0.0, 1.0) * 255).astype(np.uint8)[:, :, None]


# ---------------------------------------------------------------------------------------------
# Public API


def render_genuine(
    writer: Writer, index: int, height: int, width: int, seed: int, writer_index: int
) -> np.ndarray:
    """Genuine sample `index` of `writer` -> [height, width, 1] uint8, ink high."""
    rng = _rng(seed, writer_index, 2, index)
    strokes, _ = _signature_strokes(writer, rng, None)
    return _render(strokes, writer, writer.slant, height, width, rng, 1.0)


def render_forgery(
    writer: Writer,
    forger: Forger,
    index: int,
    height: int,
    width: int,
    seed: int,
    writer_index: int,
) -> np.ndarray:
    """Skilled forgery `index` of `writer` by `forger` -> [height, width, 1] uint8, ink high."""
    rng = _rng(seed, writer_index, 3, index)
    strokes, _ = _signature_strokes(writer, rng, forger)
    ref = _template_scale(writer, height, width)
    return _render(
        strokes, writer, writer.slant + forger.slant, height, width, rng, _FORGERY_NOISE, ref
    )


def _template_scale(writer: Writer, height: int, width: int) -> float:
    """Pixels per signature unit of the writer's unperturbed signature fitted to the canvas."""
    paths = [_word_path(w) for w in writer.words] + [_bezier(m.ctrl, 8) for m in writer.marks]
    q = np.concatenate(paths)
    q = q @ np.array([[1.0, np.tan(writer.slant)], [0.0, 1.0]]).T
    c, s = np.cos(writer.rotation), np.sin(writer.rotation)
    q = q @ np.array([[c, -s], [s, c]]).T
    ext = q.max(0) - q.min(0) + writer.width
    return 0.94 * min(width * 0.9 / ext[0], height * 0.9 / ext[1])


def render_writer(writer_index: int, settings: Settings) -> list[dict]:
    """All examples of one writer, in the `siamjax.datasets.common` format.

    Forgery j is made by the writer's forger j % forgers_per_writer, whose global id is
    writer_index * forgers_per_writer + (j % forgers_per_writer).
    """
    height, width, seed = settings.height, settings.width, settings.seed
    writer = make_writer(seed, writer_index)
    name = f"w{writer_index:04d}"
    out = []
    for g in range(settings.genuine_per_writer):
        image = render_genuine(writer, g, height, width, seed, writer_index)
        out.append(_example(image, name, True, -1, f"{name}/genuine_{g:02d}", settings.ink))
    per_writer = settings.forgers_per_writer
    forgers = [
        make_forger(seed, writer_index, k, settings.forgery_style)
        for k in range(max(per_writer, 1))
    ]
    for j in range(settings.forgeries_per_writer):
        k = j % len(forgers)
        fid = writer_index * per_writer + k
        image = render_forgery(writer, forgers[k], j, height, width, seed, writer_index)
        out.append(
            _example(image, name, False, fid, f"{name}/forgery_f{fid:04d}_{j:02d}", settings.ink)
        )
    return out


def _example(
    image: np.ndarray, writer: str, is_genuine: bool, forger: int, path: str, ink: str
) -> dict:
    image = preprocess.restyle_ink(image, ink)
    return {
        "image": image,
        "writer": writer,
        "is_genuine": is_genuine,
        "forger": forger,
        "path": path,
        # The path is hashed with the pixels: two identical renderings stay distinct examples.
        "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
    }


def render_dataset(settings: Settings) -> Iterator[dict]:
    """Every example of the procedural dataset, writer by writer, deterministically from the seed.

    Yields dicts with the features of `siamjax.datasets.common.features(height, width)`:
    image [height, width, 1] uint8 (ink 255 on 0), writer "w0003", is_genuine, forger (-1 for
    genuine, else a global forger id), path "w0003/genuine_05" / "w0003/forgery_f0012_03", sha256.
    """
    for w in range(settings.num_writers):
        yield from render_writer(w, settings)
