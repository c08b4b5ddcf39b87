"""What eval.py runs: restore a checkpoint read-only, evaluate a split (`siamjax.evaluation`, the
function training's validation uses too), report it (`siamjax.report`: metrics, scores, plots).

The decision threshold is the one chosen on the validation split when the checkpoint was saved
(stored with it), never one chosen on the split being evaluated; figures that do pick a threshold
on the evaluated split (EER, `oracle_accuracy`) say so in their definitions.

With `config.eval.dataset` set, the model trained on `config.dataset` is evaluated on another
dataset's writers (cross-dataset); the threshold is still the training dataset's.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from siamjax import evaluation, inference, parallel, report, scoring
from siamjax import pairs as pairs_lib
from siamjax import workdir as workdir_lib
from siamjax.data import Data
from siamjax.datasets import registry
from siamjax.errors import UserError


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
    restored = workdir_lib.restore(config, workdir, step, mesh)
    data = Data(target_config)
    if split not in data.eval_pairs:
        raise UserError(
            f"the {split} split of {target_config.dataset} has no writers under config.split."
        )
    scorer = inference.Scorer(restored.model, mesh, config.eval_batch_size)
    k, per_writer = config.eval.references, bool(config.eval.user_thresholds)

    def trial_set(d: Data, name: str) -> evaluation.TrialSet:
        scores = inference.TrialScores(
            scorer, restored.variables, d.catalog.images, config.eval.fusion
        )
        return evaluation.TrialSet(
            d.trials(name, k, config.seed), d.catalog.writer, scores, scores.enrol
        )

    # The training dataset, for its validation split: built only when the threshold (or the
    # prior) is not stored with the checkpoint.
    train_data = data if target_config is config else None
    threshold = restored.threshold if k == 1 else None  # Chosen under the same protocol.
    validation = None  # None: the target is the training dataset's validation split itself.
    if (threshold is None or per_writer) and (train_data is None or split != "validation"):
        train_data = train_data or Data(config)
        validation = trial_set(train_data, "validation")
    prior = restored.prior_positive
    prior = float(prior if prior is not None else (train_data or Data(config)).prior_positive)
    target = trial_set(data, split)
    result = evaluation.evaluate(
        target, prior, threshold=threshold, validation=validation, per_writer=per_writer
    )
    results = dict(result.metrics)
    results.update(
        swap_effect(
            scorer, restored.variables, data.catalog.images, target.trials, result.threshold
        )
    )
    out_dir = eval_dir(config, workdir, split)
    if jax.process_index() == 0:
        report.write_outputs(
            out_dir,
            config,
            restored.step,
            results,
            result.scored.scores,
            target.trials,
            data.catalog,
            prior,
        )
    logging.info("wrote %s", out_dir)
    print(report.format_table(results, split, restored.step, config))
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
