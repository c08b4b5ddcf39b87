"""eval.py's library on a trained tiny workdir: outputs, K references, per-writer thresholds."""

import csv
import json

import jax
import numpy as np
import pytest

from configs import synthetic
from siamjax import eval_lib, inference, models, pairs, parallel
from siamjax import workdir as workdir_lib
from siamjax.data import Data
from siamjax.errors import UserError


@pytest.fixture
def trained(tiny_run):
    """The session's trained tiny workdir, with a config of this test's own."""
    cfg, workdir = tiny_run
    return cfg.copy_and_resolve_references(), workdir


def test_k_references_with_per_writer_thresholds(trained):
    cfg, workdir = trained
    cfg = cfg.copy_and_resolve_references()
    cfg.eval.references = 2
    cfg.eval.fusion = "max"
    cfg.eval.user_thresholds = True
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    out = f"{workdir}/eval/test"
    doc = json.load(open(f"{out}/metrics.json"))
    assert doc["references"] == 2 and doc["fusion"] == "max" and doc["user_thresholds"]
    assert doc["metrics"]["eer"] == pytest.approx(metrics["eer"])
    rows = list(csv.DictReader(open(f"{out}/scores.csv")))
    assert len(rows) == sum(doc["pair_counts"].values())
    assert all(len(r["reference"].split(";")) == 2 for r in rows)
    assert all(0.0 < float(r["score"]) < 1.0 for r in rows)


def test_enrollment_means_equal_the_model_on_reference_pairs(trained):
    cfg, workdir = trained
    mesh = parallel.make_mesh()
    model, variables, _, _ = workdir_lib.restore(cfg, workdir, None, mesh)
    data = Data(cfg)
    trials = pairs.reference_trials(
        data.catalog.writer, data.catalog.is_genuine, data.indices["test"], 2, seed=0
    )
    scorer = inference.Scorer(model, mesh, cfg.eval_batch_size)
    means = inference.enrollment_means(scorer, variables, data.catalog.images, trials)
    r1, r2 = trials.references[0]
    img = data.catalog.images
    logits = model.apply(variables, img[[r1, r2]], img[[r2, r1]], train=False)
    expected = float(np.mean(jax.nn.sigmoid(logits)))
    assert means[0] == pytest.approx(expected, abs=1e-5)
    assert isinstance(model, models.SiameseNet)


def test_cross_dataset_uses_the_training_threshold_and_its_own_folder(trained):
    cfg, workdir = trained
    source = Data(cfg)
    cfg = cfg.copy_and_resolve_references()
    cfg.eval.dataset = "synthetic"
    cfg.synthetic.seed += 1  # Other writers and images: a second dataset of the same shape.
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    out = f"{workdir}/eval/synthetic_test"
    doc = json.load(open(f"{out}/metrics.json"))
    assert doc["dataset"] == "synthetic" and doc["metrics"]["eer"] == pytest.approx(metrics["eer"])
    _, _, _, meta = workdir_lib.restore(cfg, workdir, None, parallel.make_mesh())
    assert metrics["threshold"] == pytest.approx(meta["val_threshold"])
    target = Data(eval_lib.eval_dataset_config(cfg))
    assert not set(target.catalog.sha256) & set(source.catalog.sha256)
    # The scores are the model's on the other dataset's images.
    model, variables, _, _ = workdir_lib.restore(cfg, workdir, None, parallel.make_mesh())
    p = target.eval_pairs["test"]
    img = target.catalog.images
    row = next(csv.DictReader(open(f"{out}/scores.csv")))
    logit = model.apply(variables, img[p.a[:1]], img[p.b[:1]], train=False)
    assert float(row["score"]) == pytest.approx(float(jax.nn.sigmoid(logit[0])), abs=1e-5)


@pytest.mark.parametrize("combine", ["diff", "absdiff"])
def test_swap_effect_is_zero_only_for_a_symmetric_head(combine):
    cfg = synthetic.get_config("tiny")
    cfg.model.combine = combine
    model = models.create_model(cfg.model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, cfg.image_height, cfg.image_width, 1), dtype=np.uint8)
    dummy = np.zeros((2, cfg.image_height, cfg.image_width, 1), np.uint8)
    variables = model.init({"params": jax.random.key(1)}, dummy, dummy, train=False)
    trials = pairs.Trials(
        questioned=np.array([1, 2, 4], np.int32),
        references=np.array([[0], [3], [5]], np.int32),
        kind=np.array([0, 1, 2], np.int32),
        label=np.array([1, 0, 0], np.int32),
    )
    scorer = inference.Scorer(model, parallel.make_mesh(), 8)
    got = eval_lib.swap_effect(scorer, variables, images, trials, threshold=0.5)
    # Independently: the model applied to (r, q) and to (q, r).
    r, q = images[trials.references[:, 0]], images[trials.questioned]
    p_rq = np.asarray(jax.nn.sigmoid(model.apply(variables, r, q, train=False)))
    p_qr = np.asarray(jax.nn.sigmoid(model.apply(variables, q, r, train=False)))
    assert got["swap_mean_change"] == pytest.approx(np.mean(np.abs(p_rq - p_qr)), abs=1e-6)
    if combine == "absdiff":  # Each image is embedded once, so |e1 - e2| is bitwise symmetric.
        assert got["swap_mean_change"] == 0.0 and got["swap_flip_rate"] == 0.0
    else:  # Even untrained, the signed difference moves the score.
        assert got["swap_mean_change"] > 1e-6


def test_enrolment_none_equals_the_plain_k_reference_scores(trained):
    cfg, workdir = trained
    mesh = parallel.make_mesh()
    restored = workdir_lib.restore(cfg, workdir, None, mesh)
    data = Data(cfg)
    trials = data.trials("test", 2, seed=0)
    scorer = inference.Scorer(restored.model, mesh, cfg.eval_batch_size)
    images = data.catalog.images
    plain = inference.TrialScores(scorer, restored.variables, images, "mean")(trials)
    enrolled = inference.EnrolledScores(scorer, restored.variables, images, "none", "mean")
    # Embedding once and scoring embeddings is the same float32 computation as scoring pairs.
    np.testing.assert_allclose(enrolled(trials), plain, atol=1e-6)


@pytest.mark.parametrize("method", ["znorm", "svm", "svm_pair"])
def test_enrolment_methods_evaluate_and_say_so(trained, method):
    cfg, workdir = trained
    cfg.eval.references = 2
    cfg.eval.enrollment = method
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    doc = json.load(open(f"{workdir}/eval/test/metrics.json"))
    assert doc["enrollment"] == method and doc["writers_left_out"] == []
    assert doc["writers_evaluated"] == len(Data(cfg).splits["test"])
    assert 0.0 <= metrics["eer"] <= 1.0 and np.isfinite(metrics["threshold"])


def test_too_few_genuine_for_k_is_refused_unless_allowed(trained):
    cfg, workdir = trained
    cfg.eval.references = cfg.synthetic.genuine_per_writer  # Needs one more genuine per writer.
    with pytest.raises(UserError, match="allow_fewer_writers"):
        eval_lib.run_evaluation(cfg, workdir, "test")


@pytest.mark.parametrize("scorer", ["ink", "ink_pair"])
def test_ink_controls_need_no_checkpoint(trained, tmp_path, scorer):
    cfg, _ = trained
    cfg.eval.scorer = scorer
    metrics = eval_lib.run_evaluation(cfg, str(tmp_path), "test")
    doc = json.load(open(tmp_path / "eval" / "test" / "metrics.json"))
    assert doc["scorer"] == scorer and doc["checkpoint_step"] == 0
    assert 0.0 <= metrics["eer"] <= 1.0 and "swap_flip_rate" not in doc["metrics"]


@pytest.mark.parametrize("method", ["znorm", "svm", "svm_pair"])
def test_the_verifier_enrols_as_eval_does(trained, method):
    """eval.py stores the enrolment's validation threshold (and svm's negatives); the Verifier
    then scores a writer's K references and a questioned signature as eval.py scored that trial."""
    from siamjax import enrollment, verify

    cfg, workdir = trained
    cfg.eval.references, cfg.eval.enrollment = 2, method
    eval_lib.run_evaluation(cfg, workdir, "test")
    with open(enrollment.calibration_path(workdir, method, 2)) as f:
        calibration = json.load(f)
    data = Data(cfg)
    trials = data.trials("test", 2, seed=0)
    v = verify.Verifier(workdir, fusion=cfg.eval.fusion, enrollment=method).load()
    assert calibration["step"] == v.step
    mesh = parallel.make_mesh()
    restored = workdir_lib.restore(cfg, workdir, None, mesh)
    scorer = inference.Scorer(restored.model, mesh, cfg.eval_batch_size)
    train = data.indices["train"]
    negatives = train[data.catalog.is_genuine[train]] if method != "znorm" else None
    images = data.catalog.images
    combine = calibration.get("combine")
    assert (combine is not None) == (method == "svm_pair")
    expected = inference.EnrolledScores(
        scorer, restored.variables, images, method, cfg.eval.fusion, negatives, combine=combine
    )(trials)
    for i in (0, len(trials) // 2, len(trials) - 1):
        refs, q = trials.references[i], trials.questioned[i]
        emb = v.embed_images(images[[*refs, q]])
        d = v.decide_embeddings(emb[:2], emb[2], ["r1", "r2"], "q")
        assert d.enrollment == method and d.threshold == pytest.approx(calibration["threshold"])
        assert d.score == pytest.approx(expected[i], abs=1e-5)  # float32 embeddings, same maths.
    with pytest.raises(UserError, match="no calibrated threshold"):
        v.decide_embeddings(emb, emb[2], ["r1", "r2", "q"], "q")
