"""Contrastive and triplet losses: their values, the triplet sampler, the distance head, the train
step with each loss, and train_and_evaluate -> evaluation -> verify with the metric losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import default
from siamjax import losses, models, pairs, parallel, train_lib
from siamjax.errors import UserError

# ---- Loss values -----------------------------------------------------------------------------


def test_contrastive_equals_hand_computed_values():
    e1 = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    e2 = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.0, 6.0]])  # Distances 5, 3, 6.
    labels = jnp.array([1, 0, 0])
    # Genuine: d^2 = 25; forged inside the margin 4: (4 - 3)^2 = 1; forged beyond it: 0.
    np.testing.assert_allclose(
        losses.contrastive(e1, e2, labels, margin=4.0), [25.0, 1.0, 0.0], rtol=1e-6
    )


def test_triplet_equals_hand_computed_values():
    a = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    p = jnp.array([[1.0, 0.0], [0.0, 3.0], [1.0, 2.0]])
    n = jnp.array([[0.0, 2.0], [1.0, 0.0], [1.0, 2.5]])
    # 1 - 4 + 1 < 0 -> 0;  9 - 1 + 1 = 9;  1 - 2.25 + 1 = -0.25 -> 0 ... with margin 1.5: 0.25.
    np.testing.assert_allclose(losses.triplet(a, p, n, margin=1.0), [0.0, 9.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(losses.triplet(a, p, n, margin=1.5), [0.0, 9.5, 0.25], atol=1e-6)


def test_loss_names_and_their_head_are_checked_in_one_place():
    losses.check_loss("bce", "absdiff")
    losses.check_loss("triplet", "distance")
    with pytest.raises(UserError, match="config.loss='hinge'"):
        losses.check_loss("hinge", "distance")
    with pytest.raises(UserError, match="config.loss='contrastive' needs config.model.combine"):
        losses.check_loss("contrastive", "absdiff")
    assert set(losses.LOSSES) == {"bce", "contrastive", "triplet"}


# ---- The triplet sampler -------------------------------------------------------------------------


def _toy(num_writers=10, genuine=5, forged=3):
    writer = np.repeat([f"w{w:02d}" for w in range(num_writers)], genuine + forged)
    is_genuine = np.tile(np.arange(genuine + forged) < genuine, num_writers)
    return writer, is_genuine


def test_triplets_obey_the_protocol_and_are_reproducible():
    writer, is_genuine = _toy()
    train = np.flatnonzero(np.isin(writer, [f"w{w:02d}" for w in range(7)]))  # 3 writers held out.
    cfg = default.get_config().pairs
    t = pairs.sample_train_triplets(writer, is_genuine, train, cfg, seed=3, epoch=0)
    assert len(t) == cfg.pairs_per_genuine * 7 * 5 // 2
    for x in (t.anchor, t.positive, t.negative, t.negative_kind):
        assert x.dtype == np.int32 and x.shape == (len(t),)
    assert np.all(np.isin(np.concatenate([t.anchor, t.positive, t.negative]), train))
    assert np.all(t.anchor != t.positive)
    assert np.all(writer[t.anchor] == writer[t.positive])
    assert np.all(is_genuine[t.anchor]) and np.all(is_genuine[t.positive])
    sk, rnd = t.negative_kind == pairs.SKILLED, t.negative_kind == pairs.RANDOM
    assert np.all(sk | rnd)
    assert np.all(~is_genuine[t.negative[sk]]) and np.all(
        writer[t.negative[sk]] == writer[t.anchor[sk]]
    )
    assert np.all(is_genuine[t.negative[rnd]]) and np.all(
        writer[t.negative[rnd]] != writer[t.anchor[rnd]]
    )
    assert sk.sum() == round(len(t) * cfg.skilled / (cfg.skilled + cfg.random))
    assert t.counts() == {"skilled": int(sk.sum()), "random": int(rnd.sum())}

    again = pairs.sample_train_triplets(writer, is_genuine, train, cfg, seed=3, epoch=0)
    other = pairs.sample_train_triplets(writer, is_genuine, train, cfg, seed=3, epoch=1)
    for x, y in zip(
        (t.anchor, t.positive, t.negative, t.negative_kind),
        (again.anchor, again.positive, again.negative, again.negative_kind),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(t.anchor, other.anchor)


def test_a_kind_the_split_lacks_gives_its_share_to_the_other():
    cfg = default.get_config().pairs
    writer, is_genuine = _toy(genuine=4, forged=0)  # No forgeries: random negatives only.
    t = pairs.sample_train_triplets(writer, is_genuine, np.arange(len(writer)), cfg, 0, 0)
    assert len(t) == cfg.pairs_per_genuine * 10 * 4 // 2 and np.all(t.negative_kind == pairs.RANDOM)
    writer, is_genuine = _toy(num_writers=1)  # One writer: skilled negatives only.
    t = pairs.sample_train_triplets(writer, is_genuine, np.arange(len(writer)), cfg, 0, 0)
    assert len(t) == cfg.pairs_per_genuine * 5 // 2 and np.all(t.negative_kind == pairs.SKILLED)
    writer, is_genuine = _toy(num_writers=1, forged=0)
    with pytest.raises(UserError, match="cannot draw triplets"):
        pairs.sample_train_triplets(writer, is_genuine, np.arange(len(writer)), cfg, 0, 0)


# ---- The distance head ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw_scale", [None, -6.0, 3.0])
def test_the_distance_logit_falls_monotonically_with_the_distance(raw_scale):
    head = models.Head(combine="distance")
    e1 = jnp.zeros((50, 8))
    e2 = jnp.zeros((50, 8)).at[:, 3].set(jnp.linspace(0.0, 10.0, 50))
    # Module.init itself: Head's `init` field (the initialiser's name) shadows it.
    variables = nn.Module.init(head, jax.random.key(0), e1, e2)
    assert set(variables["params"]) == {"bias", "raw_scale"}
    if raw_scale is not None:  # The scale stays positive whatever its parameter becomes.
        variables = {"params": {"bias": jnp.float32(0.3), "raw_scale": jnp.float32(raw_scale)}}
    logits = np.asarray(head.apply(variables, e1, e2))
    assert logits.shape == (50,) and np.all(np.diff(logits) < 0)


def test_swapping_a_pair_leaves_the_distance_score_unchanged():
    head = models.Head(combine="distance")
    rng = np.random.default_rng(0)
    e1, e2 = (jnp.asarray(rng.normal(size=(6, 16)), jnp.float32) for _ in range(2))
    variables = nn.Module.init(head, jax.random.key(0), e1, e2)
    np.testing.assert_array_equal(head.apply(variables, e1, e2), head.apply(variables, e2, e1))
    assert not np.allclose(head.apply(variables, e1, e2), head.apply(variables, e1, e1))


# ---- The train step ------------------------------------------------------------------------------


# The metric losses train on distances: the distance head; fixed data, so no augmentation (it would
# only add noise to the loss).
METRIC = {"model": {"combine": "distance"}, "augment": {"max_shift": 0}}


def _batch(n, triplet, seed=0):
    rng = np.random.default_rng(seed)
    names = ("image_a", "image_b", "image_c") if triplet else ("image_a", "image_b")
    batch = {k: rng.integers(0, 256, (n, 32, 48, 1), dtype=np.uint8) for k in names}
    batch["label"] = (
        np.ones(n, np.int32) if triplet else np.tile(np.array([0, 1], np.int32), n // 2)
    )
    return batch


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_a_few_steps_reduce_the_loss_on_fixed_data(loss, tiny_config):
    cfg = tiny_config(loss=loss, **METRIC)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state, sharding = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
    step = train_lib.compile_train_step(cfg, mesh, sharding)
    batch = parallel.to_global(_batch(16, loss == "triplet"), mesh)
    head_before = jax.device_get(state.params["head"])
    history = []
    for _ in range(15):
        state, m = step(state, batch)
        history.append(float(m["train"].compute()["loss"]))
    scored = m["train"].accuracy
    assert scored.count == (32 if loss == "triplet" else 16)  # Triplets score two pairs each.
    assert 0 <= scored.total <= scored.count
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history
    head_after = jax.device_get(state.params["head"])
    assert head_after["bias"] != head_before["bias"]  # The calibration term trains the head.


def test_the_metric_losses_refuse_a_head_that_does_not_score_distances(tmp_path, tiny_config):
    cfg = tiny_config(loss="contrastive", **{**METRIC, "model": {"combine": "absdiff"}})
    with pytest.raises(UserError, match="combine='distance'"):
        train_lib.train_step(None, {}, config=cfg)
    with pytest.raises(UserError, match="combine='distance'"):
        train_lib.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # Refused before the workdir is touched.


# ---- End to end ----------------------------------------------------------------------------------


def test_train_data_batches_triplets_only_for_the_triplet_loss(tiny_config):
    from siamjax.data import Data
    from siamjax.input_pipeline import TrainData

    cfg = tiny_config(loss="triplet", **METRIC)
    data = Data(cfg)
    assert data.prior_positive == 0.5
    batch = next(TrainData(data, cfg).batches())  # Catalog indices, gathered on the device.
    assert list(batch) == ["index_a", "index_b", "index_c", "label"]
    assert batch["index_c"].shape == (8,) and np.all(batch["label"] == 1)
    cfg.device_images_max_mb = 0  # Gathered on the host: the images themselves.
    batch = next(TrainData(data, cfg).batches())
    assert list(batch) == ["image_a", "image_b", "image_c", "label"]
    assert batch["image_c"].shape == (8, 32, 48, 1) and np.all(batch["label"] == 1)
    cfg.loss = "contrastive"
    batch = next(TrainData(Data(cfg), cfg).batches())
    assert list(batch) == ["image_a", "image_b", "label"]


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_train_and_evaluate_with_the_metric_losses(loss, tiny_config, tmp_path):
    from siamjax import eval_lib, verify

    cfg = tiny_config(loss=loss, num_train_steps=6, **METRIC)
    summary = train_lib.train_and_evaluate(cfg, str(tmp_path / "run"))
    val = summary["validation"]
    assert summary["final_step"] == 6
    for key in ("eer", "eer_random", "auc", "accuracy", "threshold"):
        assert np.isfinite(val[key]), key
    if loss != "triplet":
        return
    # The rest of the chain works unchanged on a triplet-trained workdir.
    test = eval_lib.run_evaluation(cfg, str(tmp_path / "run"), "test")
    assert np.isfinite(test["eer"]) and 0.0 <= test["auc"] <= 1.0
    page = np.full((64, 96), 255, np.uint8)
    page[20:40, 10:80] = 0
    Image.fromarray(page).save(tmp_path / "a.png")
    page[25:45, 20:70] = 0
    Image.fromarray(page).save(tmp_path / "b.png")
    decision = verify.Verifier(str(tmp_path / "run")).verify(
        str(tmp_path / "a.png"), str(tmp_path / "b.png")
    )
    assert 0.0 < decision.score < 1.0 and decision.prior_positive == 0.5
    assert decision.threshold == pytest.approx(val["threshold"])
