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
    config.eval.dataset; writes `eval_dir(...)` and returns the metrics dict.

    `config.eval.scorer` other than 'model' scores with an untrained ink-darkness control
    (`siamjax.ink_baseline`): no checkpoint is read, and `workdir` only receives the report.
    """
    if split not in ("validation", "test"):
        raise UserError(f"--split={split!r}; use 'validation' or 'test'.")
    if config.eval.fusion not in scoring.FUSE_METHODS:
        raise UserError(
            f"config.eval.fusion={config.eval.fusion!r}; use one of {scoring.FUSE_METHODS}."
        )
    k, per_writer = config.eval.references, bool(config.eval.user_thresholds)
    method = config.eval.enrollment
    from siamjax import enrollment

    enrollment.check_method(method, k)
    if config.eval.scorer != "model" and (method != "none" or per_writer):
        raise UserError(
            f"config.eval.scorer={config.eval.scorer!r} scores ink alone: it takes no "
            "enrollment and no per-writer thresholds."
        )
    workdir = os.path.abspath(workdir)
    target_config = eval_dataset_config(config)
    data = Data(target_config)
    if split not in data.eval_pairs:
        raise UserError(
            f"the {split} split of {target_config.dataset} has no writers under config.split."
        )
    # The training dataset, for its validation split (and the enrolment's negatives): built
    # only when needed.
    train_data = data if target_config is config else None

    def training_data() -> Data:
        nonlocal train_data
        train_data = train_data or Data(config)
        return train_data

    def trials_of(d: Data, name: str) -> pairs_lib.Trials:
        return d.trials(name, k, config.seed, bool(config.eval.allow_fewer_writers))

    combine = None  # COMBINED enrolments' weights, fitted on validation.
    if config.eval.scorer == "model":
        mesh = parallel.make_mesh()
        restored = workdir_lib.restore(config, workdir, step, mesh)
        scorer = inference.Scorer(restored.model, mesh, config.eval_batch_size)
        negatives = None
        if method in enrollment.WITH_NEGATIVES:  # The training split's genuine signatures.
            train = training_data()
            idx = train.indices["train"]
            negatives = (idx[train.catalog.is_genuine[idx]], train.catalog.images)

        # One enrolled scorer per dataset: validation's fits the combination and is then scored
        # from the same components; the negatives are embedded once.
        enrolled_of: dict[int, inference.EnrolledScores] = {}

        def enrolled(d: Data) -> inference.EnrolledScores:
            if id(d) not in enrolled_of:
                enrolled_of[id(d)] = inference.EnrolledScores(
                    scorer,
                    restored.variables,
                    d.catalog.images,
                    method,
                    config.eval.fusion,
                    *(negatives or (None, None)),
                )
            return enrolled_of[id(d)]

        if method in enrollment.COMBINED:
            # Fitted where the threshold is chosen: the training dataset's validation trials.
            val_trials = trials_of(training_data(), "validation")
            parts = enrolled(training_data()).components(val_trials)
            combine = enrollment.fit_combination(parts, val_trials.label)
            logging.info("%s: combination (w_svm, w_pair, bias) = %s", method, combine)

        def trial_set(d: Data, name: str) -> evaluation.TrialSet:
            plain = inference.TrialScores(
                scorer, restored.variables, d.catalog.images, config.eval.fusion
            )
            score = plain
            if method != "none":
                score = enrolled(d)
                score.combine = combine
            return evaluation.TrialSet(trials_of(d, name), d.catalog.writer, score, plain.enrol)

        # The saved threshold was chosen on the fixed validation pairs scored plainly.
        threshold = restored.threshold if k == 1 and method == "none" else None
        prior, checkpoint_step = restored.prior_positive, restored.step
    else:
        from siamjax import ink_baseline

        def trial_set(d: Data, name: str) -> evaluation.TrialSet:
            ink = ink_baseline.InkScorer.fit(
                config.eval.scorer, d.catalog.images, d.catalog.is_genuine, d.indices["train"]
            )
            return evaluation.TrialSet(trials_of(d, name), d.catalog.writer, ink.trial_scores)

        threshold, prior, checkpoint_step = None, None, 0
    validation = None  # None: the target is the training dataset's validation split itself.
    if (threshold is None or per_writer) and (train_data is None or split != "validation"):
        validation = trial_set(training_data(), "validation")
    prior = float(prior if prior is not None else training_data().prior_positive)
    target = trial_set(data, split)
    result = evaluation.evaluate(
        target, prior, threshold=threshold, validation=validation, per_writer=per_writer
    )
    results = dict(result.metrics)
    if config.eval.scorer == "model":
        results.update(
            swap_effect(
                scorer, restored.variables, data.catalog.images, target.trials, result.threshold
            )
        )
    out_dir = eval_dir(config, workdir, split)
    if jax.process_index() == 0 and method != "none":
        # What siamjax-verify and the service need to enrol the same way at this threshold.
        enrollment.save_calibration(
            workdir,
            method,
            k,
            threshold=result.threshold,
            step=checkpoint_step,
            fusion=config.eval.fusion,
            negatives=target.score.negatives,
            combine=combine,
        )
    if jax.process_index() == 0:
        report.write_outputs(
            out_dir,
            config,
            checkpoint_step,
            results,
            result.scored.scores,
            target.trials,
            data.catalog,
            prior,
        )
    logging.info("wrote %s", out_dir)
    print(report.format_table(results, split, checkpoint_step, config))
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
