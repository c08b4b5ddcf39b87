"""What eval.py runs: restore a checkpoint read-only, score a split, write metrics, scores, plots.

The decision threshold is the one chosen on the validation split when the checkpoint was saved
(stored with it), never one chosen on the split being evaluated; figures that do pick a threshold
on the evaluated split (EER, `oracle_accuracy`) say so in their definitions.

With `config.eval.dataset` set, the model trained on `config.dataset` is evaluated on another
dataset's writers (cross-dataset); the threshold is still the training dataset's.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from siamjax import inference, metrics, parallel, plots, scoring
from siamjax import pairs as pairs_lib
from siamjax import workdir as workdir_lib
from siamjax.datasets import registry
from siamjax.errors import UserError
from siamjax.input_pipeline import Data

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


def trials_for(data: Data, split: str, config: ml_collections.ConfigDict) -> pairs_lib.Trials:
    """The split's fixed pairs (K = 1) or its K-reference trials (config.eval.references)."""
    k = config.eval.references
    if k == 1:
        return pairs_lib.pairs_as_trials(data.eval_pairs[split])
    return pairs_lib.reference_trials(
        data.catalog.writer, data.catalog.is_genuine, data.indices[split], k, config.seed
    )


def eval_dataset_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config whose dataset is evaluated: `config` itself, or (config.eval.dataset set) a copy
    naming that dataset, with the same split protocol, seed and image size. Keys that both
    datasets read (config.synthetic, config.real) are shared: overriding them also changes the
    training dataset whose validation sets the threshold when none is stored (K > 1, per-writer
    thresholds)."""
    if not config.eval.dataset:
        return config
    if config.eval.dataset not in registry.DATASETS:
        raise UserError(
            f"config.eval.dataset={config.eval.dataset!r}; use '' (the training "
            f"dataset) or one of {registry.DATASETS}."
        )
    target = config.copy_and_resolve_references()
    target.dataset = config.eval.dataset
    return target


def eval_dir(config: ml_collections.ConfigDict, workdir: str, split: str) -> str:
    """<workdir>/eval/<split>/, or <workdir>/eval/<dataset>_<split>/ for a cross-dataset run."""
    name = f"{config.eval.dataset}_{split}" if config.eval.dataset else split
    return os.path.join(workdir, "eval", name)


def run_evaluation(
    config: ml_collections.ConfigDict, workdir: str, split: str = "test", step: int | None = None
) -> dict[str, Any]:
    """Evaluates `split` ('validation' or 'test') of the training dataset, or of
    config.eval.dataset; writes `eval_dir(...)` and returns the metrics dict."""
    if split not in ("validation", "test"):
        raise UserError(f"--split={split!r}; use 'validation' or 'test'.")
    if config.eval.fusion not in scoring.FUSE_METHODS:
        raise UserError(
            f"config.eval.fusion={config.eval.fusion!r}; use one of {scoring.FUSE_METHODS}."
        )
    workdir = os.path.abspath(workdir)
    target_config = eval_dataset_config(config)
    mesh = parallel.make_mesh()
    model, variables, step, meta = workdir_lib.restore(config, workdir, step, mesh)
    data = Data(target_config)
    if split not in data.eval_pairs:
        raise UserError(
            f"the {split} split of {target_config.dataset} has no writers under config.split."
        )
    # The training dataset, for its validation split: built only when the threshold (or the
    # prior) is not stored with the checkpoint.
    train_data = data if target_config is config else None
    scorer = inference.Scorer(model, mesh, config.eval_batch_size)

    def training_data():
        nonlocal train_data
        if train_data is None:
            train_data = Data(config)
        return train_data

    def scored(d, name):
        trials = trials_for(d, name, config)
        images = d.catalog.images
        scores = inference.trial_scores(scorer, variables, images, trials, config.eval.fusion)
        offsets = (
            inference.enrollment_means(scorer, variables, images, trials)
            if config.eval.user_thresholds
            else None
        )
        return trials, scores, offsets

    per_writer = bool(config.eval.user_thresholds)
    threshold = meta.get("val_threshold") if config.eval.references == 1 else None
    if threshold is None or per_writer:  # Chosen on validation under the same protocol.
        val_trials, val_scores, val_offsets = scored(training_data(), "validation")
    if per_writer:
        # Moving each writer's threshold by (m_w - m) is moving its scores by (m - m_w) under one
        # threshold; the moved scores stay probabilities (clipped) so every metric applies.
        center = float(np.mean(val_offsets))
        val_scores = scoring.shifted(val_scores, center - val_offsets)
    if threshold is None or per_writer:
        threshold = metrics.operating_threshold(val_scores, val_trials.kind)
    prior = meta.get("prior_positive")
    prior = float(prior if prior is not None else training_data().prior_positive)
    trials, scores, offsets = scored(data, split)
    if per_writer:
        scores = scoring.shifted(scores, center - offsets)
    claimed = data.catalog.writer[trials.references[:, 0]]
    results = metrics.compute_metrics(scores, trials.kind, claimed, float(threshold), prior)
    results.update(swap_effect(scorer, variables, data.catalog.images, trials, float(threshold)))
    out_dir = eval_dir(config, workdir, split)
    if jax.process_index() == 0:
        write_outputs(out_dir, config, step, results, scores, trials, data, prior)
    logging.info("wrote %s", out_dir)
    print(format_table(results, split, step, config))
    return results


def swap_effect(
    scorer: inference.Scorer,
    variables: Any,
    images: np.ndarray,
    trials: pairs_lib.Trials,
    threshold: float,
) -> dict[str, float]:
    """What changes when the two images of a pair trade places (first reference of each trial).

    A verifier should not care which of two signatures is called the reference: with `absdiff`
    or `distance` the head is symmetric and both figures are 0 up to rounding; the design's
    signed `diff` is not, and these say by how much. `swap_mean_change`: mean |p(r, q) - p(q, r)|;
    `swap_flip_rate`: share of pairs whose decision at `threshold` changes.
    """
    a, b = trials.references[:, 0], trials.questioned
    both = pairs_lib.Pairs(
        np.concatenate([a, b]).astype(np.int32),
        np.concatenate([b, a]).astype(np.int32),
        np.concatenate([trials.label, trials.label]).astype(np.int32),
        np.concatenate([trials.kind, trials.kind]).astype(np.int32),
    )
    p = scoring.probabilities(scorer.logits(variables, images, both))
    forward, swapped = p[: len(trials)], p[len(trials) :]
    return {
        "swap_mean_change": float(np.mean(np.abs(forward - swapped))),
        "swap_flip_rate": float(np.mean((forward >= threshold) != (swapped >= threshold))),
    }


def write_outputs(
    out_dir: str,
    config: ml_collections.ConfigDict,
    step: int,
    results: dict[str, float],
    scores: np.ndarray,
    trials: pairs_lib.Trials,
    data: Data,
    prior: float,
) -> None:
    """metrics.json, scores.csv and the figures (ROC, DET, histograms, worst pairs)."""
    os.makedirs(out_dir, exist_ok=True)
    cat = data.catalog
    llrs = scoring.llr(scores, prior)
    doc = {
        "metrics": metrics.jsonable(results),
        "checkpoint_step": int(step),
        "pair_counts": trials.counts(),
        "references": int(trials.references.shape[1]),
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
    lines = [
        f"{where}{split} split, checkpoint step {step}, "
        f"{config.eval.references} reference(s), fusion {config.eval.fusion}{per_writer}",
        f"pairs: {int(results['n_genuine'])} genuine, {int(results['n_skilled'])} skilled, "
        f"{int(results['n_random'])} random",
    ]
    for k in TABLE_KEYS:
        v = results.get(k, float("nan"))
        lines.append(f"  {k:<16} {v:.4f}")
    return "\n".join(lines)
