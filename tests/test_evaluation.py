"""The one evaluation: training's validation and eval.py give the same numbers for the same
checkpoint and split; the steps (trials, scorer, threshold, metrics) take any scorer."""

import math

import numpy as np
import pytest

from siamjax import checkpointing, eval_lib, evaluation, metrics, pairs


def _saved_val_metrics(workdir, step):
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        return ckpt.restore_meta(step)["val_metrics"]
    finally:
        ckpt.close()


@pytest.mark.parametrize("step", [6, 12])
def test_eval_py_gives_the_numbers_training_validated(tiny_run, step, capsys):
    """The tiny run validated at steps 6 and 12 and saved the metrics with each checkpoint;
    eval.py's library on the validation split of the same checkpoint finds them again, exactly."""
    cfg, workdir = tiny_run
    trained = _saved_val_metrics(workdir, step)
    got = eval_lib.run_evaluation(cfg.copy_and_resolve_references(), workdir, "validation", step)
    assert f"checkpoint step {step}" in capsys.readouterr().out
    assert set(trained) <= set(got)
    for key, value in trained.items():
        if value is None:  # NaN in JSON.
            assert math.isnan(got[key]), key
        else:
            assert got[key] == value, key
    assert trained["n_genuine"] > 0 and trained["threshold"] == got["threshold"]


def _toy(seed=0):
    """Trials over 12 images of 3 writers: (writer, is_genuine) and fixed pairs as trials."""
    writer = np.repeat(np.array(["a", "b", "c"]), 4)
    is_genuine = np.tile(np.array([True, True, True, False]), 3)
    idx = np.arange(12, dtype=np.int32)
    cfg = type("Cfg", (), {"eval_per_genuine": 2})()
    return writer, pairs.pairs_as_trials(pairs.eval_pairs(writer, is_genuine, idx, cfg, seed))


def _score_by_hash(trials):
    """A non-neural scorer: any function of the trials' images (here a fixed pseudo-random one
    that prefers genuine pairs a little)."""
    rng = np.random.default_rng(int(trials.questioned.sum()))
    return np.clip(rng.uniform(0.1, 0.9, len(trials)) + 0.2 * trials.label, 0.01, 0.99)


def test_any_scorer_is_evaluated_like_the_model():
    writer, trials = _toy()
    target = evaluation.TrialSet(trials, writer, _score_by_hash)
    got = evaluation.evaluate(target, 0.5)
    scores = _score_by_hash(trials)
    threshold = metrics.operating_threshold(scores, trials.kind)
    want = metrics.compute_metrics(
        scores, trials.kind, writer[trials.references[:, 0]], threshold, 0.5
    )
    assert got.threshold == threshold and got.metrics == want
    # A given threshold is used as it is; a validation set, when given, chooses it otherwise.
    assert evaluation.evaluate(target, 0.5, threshold=0.3).metrics["threshold"] == 0.3
    _, other = _toy(seed=1)
    val = evaluation.TrialSet(other, writer, _score_by_hash)
    chosen = evaluation.evaluate(target, 0.5, validation=val).threshold
    assert chosen == metrics.operating_threshold(_score_by_hash(other), other.kind)


def test_per_writer_offsets_move_each_writers_scores_around_the_validation_mean():
    writer, trials = _toy()
    offsets = np.where(writer[trials.references[:, 0]] == "a", 0.3, 0.1)
    target = evaluation.TrialSet(trials, writer, _score_by_hash, enrol=lambda t: offsets)
    got = evaluation.evaluate(target, 0.5, threshold=0.99, per_writer=True)
    moved = np.clip(_score_by_hash(trials) + (offsets.mean() - offsets), 1e-6, 1 - 1e-6)
    np.testing.assert_array_equal(got.scored.scores, moved)
    assert got.threshold == metrics.operating_threshold(moved, trials.kind)  # Chosen anew.
    with pytest.raises(ValueError, match="enrol"):
        evaluation.evaluate(
            evaluation.TrialSet(trials, writer, _score_by_hash), 0.5, per_writer=True
        )
