"""The auxiliary writer-classification loss: classes per image, a head that changes nothing else,
a loss that adds exactly its weighted cross-entropy, and a run that trains and evaluates."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import eval_lib, input_pipeline, losses, models, parallel, train_lib
from siamjax.data import Data
from siamjax.errors import UserError
from siamjax.input_pipeline import TrainData, writer_classes


def test_writer_classes_number_writers_and_leave_forgeries_out():
    writer = np.array([12, 3, 12, 7, 3, 7])
    genuine = np.array([True, True, False, True, False, True])
    np.testing.assert_array_equal(writer_classes(writer, genuine, 3), [2, 0, -1, 1, -1, 1])
    with pytest.raises(UserError, match="writer_classes=0"):
        writer_classes(writer, genuine, 0)


def test_writer_classes_beyond_the_head_go_to_training_writers_first(monkeypatch):
    # absl's warning is caught where it is made: whether absl logs reach the root logger (and
    # caplog) depends on what other tests in the process did to absl's handler.
    warned = []
    monkeypatch.setattr(
        input_pipeline.logging, "warning", lambda msg, *args: warned.append(msg % args)
    )
    writer = np.array([12, 3, 12, 7, 3, 7])
    genuine = np.array([True, True, False, True, False, True])
    train = np.array([0, 2, 3, 5])  # Writers 7 and 12 train; 3 is a validation/test writer.
    # All writers fit: the classes ignore the split (what runs made before this rule got).
    np.testing.assert_array_equal(writer_classes(writer, genuine, 3, train), [2, 0, -1, 1, -1, 1])
    # Two classes for three writers: the two training writers get them, writer 3 none.
    np.testing.assert_array_equal(writer_classes(writer, genuine, 2, train), [1, -1, -1, 0, -1, 0])
    assert not warned
    # One class for two training writers: the first (sorted) gets it, with a warning.
    np.testing.assert_array_equal(writer_classes(writer, genuine, 1, train), [-1, -1, -1, 0, -1, 0])
    assert len(warned) == 1 and "writer_classes=1 is fewer than the 2 training writers" in warned[0]


def test_writer_cross_entropy_averages_over_genuine_images_only():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    classes = jnp.array([0, 1, -1])
    lse = np.log(np.exp([2.0, 0.0]).sum()), np.log(np.exp([0.0, 1.0]).sum())
    expected = ((lse[0] - 2.0) + (lse[1] - 1.0)) / 2
    assert float(losses.writer_cross_entropy(logits, classes)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.writer_cross_entropy(logits, jnp.array([-1, -1, -1]))) == 0.0


def test_the_writer_head_changes_no_other_parameter(tiny_config):
    plain_cfg, head_cfg = tiny_config(), tiny_config(model={"writer_classes": 5})
    shape = models.input_shape(plain_cfg)
    rng = jax.random.key(0)
    plain = models.init_variables(models.create_model(plain_cfg.model), rng, shape)
    head = models.init_variables(models.create_model(head_cfg.model), rng, shape)
    assert "writer_head" not in plain["params"]
    kernel = head["params"]["writer_head"]["kernel"]
    assert kernel.shape == (plain_cfg.model.embedding_dim, 5) and kernel.dtype == jnp.float32
    others = {k: v for k, v in head["params"].items() if k != "writer_head"}
    for x, y in zip(
        jax.tree.leaves(plain), jax.tree.leaves({**head, "params": others}), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def _batch(n, h, w, classes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image_a": rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8),
        "image_b": rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8),
        "label": np.tile(np.array([0, 1], np.int32), n // 2),
        "class_a": rng.integers(0, classes, n).astype(np.int32),
        "class_b": np.where(np.arange(n) % 2 == 0, -1, rng.integers(0, classes, n)).astype(
            np.int32
        ),
    }


def test_the_loss_adds_its_weight_times_the_writer_cross_entropy(tiny_config):
    """Same state and batch: the step's loss with weight w is the pair loss plus w times the
    cross-entropy of the writer head on the (training-mode) embeddings of the genuine images."""
    weight = 0.7
    cfg = tiny_config(model={"writer_classes": 6}, augment={"max_shift": 0})
    cfg_w = tiny_config(model={"writer_classes": 6}, augment={"max_shift": 0})
    cfg_w.writer_loss_weight = weight
    model = models.create_model(cfg.model)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state, _ = train_lib.init_state_on_mesh(cfg, model, mesh)
    h, w = models.input_shape(cfg)[:2]
    batch = {k: jnp.asarray(v) for k, v in _batch(8, h, w, 6).items()}
    new0, m0 = train_lib.train_step(state, batch, config=cfg)
    new1, m1 = train_lib.train_step(state, batch, config=cfg_w)
    loss0, loss1 = (float(m["train"].compute()["loss"]) for m in (m0, m1))

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    (e1, e2), _ = model.apply(
        variables, batch["image_a"], batch["image_b"], True, method="embed_pairs",
        mutable=["batch_stats"],
    )  # fmt: skip
    logits = np.asarray(
        model.apply({"params": state.params}, jnp.concatenate([e1, e2]), method="classify_writer")[
            0
        ],
        np.float64,
    )
    classes = np.concatenate([batch["class_a"], batch["class_b"]])
    valid = classes >= 0
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -np.mean(log_p[valid, classes[valid]])
    # float32 losses of order 1: a few ulps of float32 relative.
    assert loss1 - loss0 == pytest.approx(weight * ce, rel=1e-4, abs=1e-5)
    # Without the loss the head gets no gradient; with it, it learns.
    head0, head1 = (n.params["writer_head"]["kernel"] for n in (new0, new1))
    np.testing.assert_array_equal(head0, state.params["writer_head"]["kernel"])
    assert not np.allclose(head1, state.params["writer_head"]["kernel"])


def test_batches_carry_each_images_writer_class(tiny_config):
    cfg = tiny_config(model={"writer_classes": 64})
    cfg.writer_loss_weight = 0.5
    data = Data(cfg)
    train = TrainData(data, cfg)
    batch = next(train.batches())
    cat = data.catalog
    classes = writer_classes(cat.writer, cat.is_genuine, 64)
    for index_key, class_key in (("index_a", "class_a"), ("index_b", "class_b")):
        np.testing.assert_array_equal(batch[class_key], classes[batch[index_key]])
        # Forgeries carry -1; genuine images their writer's class.
        np.testing.assert_array_equal(batch[class_key] < 0, ~cat.is_genuine[batch[index_key]])
    assert (batch["class_b"] < 0).any() and (batch["class_a"] >= 0).all()
    # A head smaller than the training writers: its classes go to training writers only.
    small = tiny_config(model={"writer_classes": 2})
    small.writer_loss_weight = 0.5
    classed = np.flatnonzero(TrainData(data, small).classes >= 0)
    train_writers = np.unique(cat.writer[data.indices["train"]])
    assert len(train_writers) > 2
    np.testing.assert_array_equal(np.unique(cat.writer[classed]), train_writers[:2])
    with pytest.raises(UserError, match="bce"):
        bad = tiny_config(model={"writer_classes": 64, "combine": "distance"}, loss="contrastive")
        bad.writer_loss_weight = 0.5
        TrainData(data, bad)


def test_a_run_with_the_writer_loss_trains_and_evaluates(tiny_config, tmp_path):
    cfg = tiny_config(num_train_steps=4, model={"writer_classes": 64})
    cfg.writer_loss_weight = 0.5
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(cfg, workdir)
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    assert 0.0 <= metrics["eer"] <= 1.0
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert saved["model"]["writer_classes"] == 64 and saved["writer_loss_weight"] == 0.5
