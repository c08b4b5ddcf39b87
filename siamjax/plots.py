"""Figures of one evaluation as small PNG files: ROC, DET, score histograms and the worst pairs.

For: `eval.py` and train-time evaluation writing pictures into the workdir (local or gs://, via
etils.epath). Not for: computing metrics (`siamjax.metrics` does, and the curves here call
it, so a plot and the numbers beside it always agree) or interactive use.

matplotlib is imported inside each function and used only through `matplotlib.figure.Figure`,
which renders with Agg when saved: importing this module costs nothing, no global backend is
switched, pyplot's global state is never touched, and nothing needs a display. Missing data (no
genuine pairs, no forgeries, no pairs) gives a figure saying so instead of an exception, so that a
thin evaluation set never stops training.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from siamjax import metrics as em

_DPI = 100
# One colour per pair kind, the same in every figure; other names take the default cycle.
_KIND_COLOURS = {"genuine": "tab:green", "skilled": "tab:red", "random": "tab:blue"}
# DET axis ticks (error rates); those inside the plotted range are shown.
_DET_TICKS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9)
_DET_HIGH = 0.9


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig: Any, path: Any) -> None:
    """PNG bytes to `path` through epath, so that gs:// workdirs work like local ones."""
    from etils import epath

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())


def _message(path: Any, title: str, text: str) -> None:
    """A small figure that says why there is nothing to draw."""
    fig = _figure(4.0, 1.5)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.4, text, ha="center", va="center", fontsize=9)
    _save(fig, path)


def _colour(name: str, i: int) -> str:
    return _KIND_COLOURS.get(name, f"C{i + 3}")


def _curves(
    pos: Any, neg_dict: Mapping[str, Any]
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    negs = [(k, np.asarray(v, dtype=np.float64).reshape(-1)) for k, v in neg_dict.items()]
    return pos, [(k, v) for k, v in negs if v.size]


def plot_roc(
    path: Any,
    pos: Any,
    neg_dict: Mapping[str, Any],
    *,
    threshold: float | None = None,
    title: str = "ROC",
) -> None:
    """ROC curves of genuine pairs against each kind of forgery, with AUC and EER in the legend.

    x = FAR, y = 1 - FRR (genuine pairs accepted), ties drawn as `metrics.roc_curve`
    joins them. A cross marks each curve's EER point; a dot its operating point at `threshold`
    (chosen on validation), so the figure shows how far the deployed threshold is from the EER.

    Args:
      path: PNG file to write (parents are created).
      pos: [n_pos] genuine-pair scores.
      neg_dict: kind name -> [n] forgery scores, e.g. {'skilled': ..., 'random': ...}; empty arrays
        are skipped.
      threshold: operating threshold to mark, or None.
      title: figure title.
    """
    pos, negs = _curves(pos, neg_dict)
    if pos.size == 0 or not negs:
        _message(path, title, "No genuine pairs." if pos.size == 0 else "No forgery pairs.")
        return
    fig = _figure(4.2, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
    for i, (name, neg) in enumerate(negs):
        far, frr, _ = em.roc_curve(pos, neg)
        e, _ = em.eer(pos, neg)
        colour = _colour(name, i)
        label = f"{name} (n={neg.size}): AUC {em.auc(pos, neg):.3f}, EER {e:.1%}"
        ax.plot(far, 1.0 - frr, color=colour, lw=1.5, label=label)
        ax.plot([e], [1.0 - e], "x", color=colour, ms=7)
        if threshold is not None:
            ax.plot([em.far(neg, threshold)], [1.0 - em.frr(pos, threshold)], "o", color=colour)
    if threshold is not None:
        ax.plot([], [], "o", color="0.3", label=f"at threshold {threshold:.3g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=f"{title} (genuine n={pos.size})")
    ax.set_xlabel("FAR (forgeries accepted)")
    ax.set_ylabel("1 - FRR (genuine accepted)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    _save(fig, path)


def plot_det(
    path: Any,
    pos: Any,
    neg_dict: Mapping[str, Any],
    *,
    threshold: float | None = None,
    title: str = "DET",
) -> None:
    """DET curves: FRR against FAR on normal-deviate (probit) axes (Martin et al. 1997).

    On these axes curves of Gaussian-like scores are near-straight lines, and the low-error region
    that matters for a deployed verifier is spread out instead of squeezed into a ROC corner. Rates
    are plotted through scipy.stats.norm.ppf after clipping to the axis range: the lowest rate shown
    is half a count of the largest set (at least 1e-4, at most 1%), the highest 90%; points outside
    (e.g. rates of exactly 0) lie on the border. A cross marks the EER (on the dashed FAR = FRR
    line), a dot the operating point at `threshold`.

    Args: as `plot_roc`.
    """
    from scipy.stats import norm

    pos, negs = _curves(pos, neg_dict)
    if pos.size == 0 or not negs:
        _message(path, title, "No genuine pairs." if pos.size == 0 else "No forgery pairs.")
        return
    largest = max([pos.size] + [neg.size for _, neg in negs])
    low = float(np.clip(0.5 / largest, 1e-4, 0.01))

    def probit(rate: Any) -> np.ndarray:
        return norm.ppf(np.clip(np.asarray(rate, dtype=np.float64), low, _DET_HIGH))

    fig = _figure(4.2, 4.2)
    ax = fig.subplots()
    ends = probit([low, _DET_HIGH])
    ax.plot(ends, ends, color="0.8", lw=0.8, ls="--")
    for i, (name, neg) in enumerate(negs):
        far, frr, _ = em.roc_curve(pos, neg)
        e, _ = em.eer(pos, neg)
        colour = _colour(name, i)
        ax.plot(probit(far), probit(frr), color=colour, lw=1.5, label=f"{name}: EER {e:.1%}")
        ax.plot(probit([e]), probit([e]), "x", color=colour, ms=7)
        if threshold is not None:
            ax.plot(probit([em.far(neg, threshold)]), probit([em.frr(pos, threshold)]), "o",
                    color=colour)  # fmt: skip
    if threshold is not None:
        ax.plot([], [], "o", color="0.3", label=f"at threshold {threshold:.3g}")
    ticks = [t for t in _DET_TICKS if low <= t <= _DET_HIGH]
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(probit(ticks), labels, fontsize=7)
    ax.set_yticks(probit(ticks), labels, fontsize=7)
    ax.set(xlim=ends, ylim=ends, aspect="equal", title=f"{title} (genuine n={pos.size})")
    ax.set_xlabel("FAR (%)")
    ax.set_ylabel("FRR (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    _save(fig, path)


def plot_histograms(
    path: Any,
    scores_by_kind: Mapping[str, Any],
    *,
    threshold: float | None = None,
    bins: int = 40,
    title: str = "Scores by pair kind",
) -> None:
    """Score distributions per pair kind on [0, 1], normalised to equal area so that kinds of very
    different counts compare; overlap is where errors come from, and a dashed line shows the
    threshold.

    Args:
      path: PNG file to write.
      scores_by_kind: kind name -> [n] scores in [0, 1], e.g. {'genuine': ..., 'skilled': ...};
        empty arrays are skipped.
      threshold: operating threshold to draw, or None.
      bins: number of equal bins over [0, 1].
      title: figure title.
    """
    kinds = [(k, np.asarray(v, dtype=np.float64).reshape(-1)) for k, v in scores_by_kind.items()]
    kinds = [(k, v) for k, v in kinds if v.size]
    if not kinds:
        _message(path, title, "No scores.")
        return
    fig = _figure(5.0, 3.0)
    ax = fig.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (name, scores) in enumerate(kinds):
        colour = _colour(name, i)
        label = f"{name} (n={scores.size})"
        ax.hist(scores, edges, density=True, color=colour, alpha=0.25)
        ax.hist(scores, edges, density=True, color=colour, histtype="step", lw=1.2, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set(xlim=(0, 1), title=title)
    ax.set_xlabel("score (1 = genuine)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_worst_pairs(
    path: Any,
    pairs: Sequence[tuple[np.ndarray, np.ndarray, str]],
    *,
    pairs_per_row: int = 2,
    ink_high: bool = True,
    title: str = "Worst pairs",
) -> None:
    """A grid of pairs, reference and questioned side by side, to see what the model gets wrong.

    Images are drawn on their own 0..255 scale (not stretched), ink dark on white like paper: with
    `ink_high` (siamjax's normalised images, 255 = ink) the grey scale is reversed.

    Args:
      path: PNG file to write.
      pairs: (image_a, image_b, caption) per pair; images uint8 [H, W] or [H, W, 1]. The caller
        chooses and orders them (e.g. genuine pairs with the lowest scores) and keeps the list
        short: each pair adds about 440 x 190 pixels.
      pairs_per_row: pairs side by side in one row of the grid.
      ink_high: True if 255 means ink.
      title: figure title.
    """
    if not pairs:
        _message(path, title, "No pairs.")
        return
    ncols = max(1, min(pairs_per_row, len(pairs)))
    nrows = -(-len(pairs) // ncols)
    fig = _figure(4.4 * ncols, 1.9 * nrows + 0.3)
    fig.suptitle(title, fontsize=10)
    cells = np.asarray(fig.subfigures(nrows, ncols, squeeze=False)).reshape(-1)
    cmap = "gray_r" if ink_high else "gray"
    for cell, (image_a, image_b, caption) in zip(cells, pairs, strict=False):
        cell.suptitle(caption, fontsize=8)
        for ax, image in zip(cell.subplots(1, 2), (image_a, image_b), strict=True):
            image = np.asarray(image)
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            if image.ndim != 2:
                raise ValueError(
                    f"plot_worst_pairs: images must be [H, W] or [H, W, 1], got {image.shape} "
                    f"for pair {caption!r}."
                )
            ax.imshow(image, cmap=cmap, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path)
