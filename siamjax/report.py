"""Reporting an evaluation: metrics.json, scores.csv, the figures and the printed table of
`eval.py`. Apart from the evaluation itself (`siamjax.evaluation`), which computes and writes
nothing, so that validation during training shares the numbers without the files.
"""

from __future__ import annotations

import csv
import json
import os

import ml_collections
import numpy as np

from siamjax import metrics, plots, scoring
from siamjax import pairs as pairs_lib
from siamjax.catalog import Catalog

TABLE_KEYS = (
    "accuracy",
    "frr",
    "far_skilled",
    "far_random",
    "eer",
    "eer_random",
    "eer_user",
    "auc",
    "auc_random",
    "cllr",
    "min_cllr",
    "oracle_accuracy",
    "threshold",
    "swap_mean_change",
    "swap_flip_rate",
)
WORST_PAIRS = 8  # Worst false accepts and worst false rejects shown in worst_pairs.png.


def write_outputs(
    out_dir: str,
    config: ml_collections.ConfigDict,
    step: int,
    results: dict[str, float],
    scores: np.ndarray,
    trials: pairs_lib.Trials,
    cat: Catalog,
    prior: float,
) -> None:
    """metrics.json, scores.csv and the figures (ROC, DET, histograms, worst pairs) of `trials`
    over the images of `cat`, scored `scores` [n]."""
    os.makedirs(out_dir, exist_ok=True)
    llrs = scoring.llr(scores, prior)
    doc = {
        "metrics": metrics.jsonable(results),
        "checkpoint_step": int(step),
        "pair_counts": trials.counts(),  # Trials per kind (genuine, skilled, random).
        "references": int(trials.references.shape[1]),
        "writers_evaluated": int(len(np.unique(cat.writer[trials.references[:, 0]]))),
        # Writers of the split without K + 1 genuine signatures (config.eval.allow_fewer_writers).
        "writers_left_out": list(trials.left_out),
        "enrollment": config.eval.get("enrollment", "none"),
        "scorer": config.eval.get("scorer", "model"),
        "ink": config.get("real", {}).get("ink", "raw"),
        "fusion": config.eval.fusion,
        "user_thresholds": bool(config.eval.user_thresholds),
        "prior_positive": prior,
        "dataset": config.eval.dataset or config.dataset,
        "trained_on": config.dataset,
        "config": json.loads(config.to_json_best_effort()),
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference", "questioned", "writer", "kind", "label", "score", "llr"])
        for i in range(len(trials)):
            refs = ";".join(cat.path[j] for j in trials.references[i])
            w.writerow(
                [
                    refs,
                    cat.path[trials.questioned[i]],
                    cat.writer[trials.references[i, 0]],
                    pairs_lib.KIND_NAMES[trials.kind[i]],
                    int(trials.label[i]),
                    f"{scores[i]:.6f}",
                    f"{llrs[i]:.4f}",
                ]
            )
    by_kind = {name: scores[trials.kind == k] for k, name in enumerate(pairs_lib.KIND_NAMES)}
    negatives = {k: v for k, v in by_kind.items() if k != "genuine" and len(v)}
    t = results["threshold"]
    plots.plot_roc(os.path.join(out_dir, "roc.png"), by_kind["genuine"], negatives, threshold=t)
    plots.plot_det(os.path.join(out_dir, "det.png"), by_kind["genuine"], negatives, threshold=t)
    plots.plot_histograms(os.path.join(out_dir, "histograms.png"), by_kind, threshold=t)
    plots.plot_worst_pairs(
        os.path.join(out_dir, "worst_pairs.png"),
        _worst_pairs(scores, trials, cat.images[..., 0], cat.path),
    )


def _worst_pairs(scores, trials, images, paths) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The most confident false accepts (highest-scored forgeries) and false rejects, each shown
    with its first reference."""
    neg = np.flatnonzero(trials.label == 0)
    pos = np.flatnonzero(trials.label == 1)
    fa = neg[np.argsort(-scores[neg], kind="stable")][:WORST_PAIRS]
    fr = pos[np.argsort(scores[pos], kind="stable")][:WORST_PAIRS]
    out = []
    for what, rows in (("false accept", fa), ("false reject", fr)):
        for i in rows:
            ref, q = trials.references[i, 0], trials.questioned[i]
            names = " | ".join(os.path.basename(paths[j]) for j in (ref, q))
            kind = pairs_lib.KIND_NAMES[trials.kind[i]]
            out.append((images[ref], images[q], f"{what} ({kind}) score {scores[i]:.3f}\n{names}"))
    return out


def format_table(
    results: dict[str, float], split: str, step: int, config: ml_collections.ConfigDict
) -> str:
    per_writer = ", per-writer thresholds" if config.eval.user_thresholds else ""
    where = f"{config.eval.dataset} (trained on {config.dataset}) " if config.eval.dataset else ""
    ev = config.eval
    how = f", enrolment {ev.enrollment}" if ev.get("enrollment", "none") != "none" else ""
    if ev.get("scorer", "model") != "model":
        how += f", scorer {ev.scorer} (untrained ink control)"
    lines = [
        f"{where}{split} split, checkpoint step {step}, "
        f"{ev.references} reference(s), fusion {ev.fusion}{per_writer}{how}",
        f"pairs: {int(results['n_genuine'])} genuine, {int(results['n_skilled'])} skilled, "
        f"{int(results['n_random'])} random",
    ]
    for k in TABLE_KEYS:
        v = results.get(k, float("nan"))
        lines.append(f"  {k:<16} {v:.4f}")
    return "\n".join(lines)
