"""Ensembles (config.model.members > 1): M networks behind one model's interface, each trained
exactly as it would be alone, and a run that trains, evaluates and exports."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import eval_lib, losses, models, parallel, train_lib
from siamjax.errors import UserError

MEMBERS = 2


def _member(variables: dict, i: int) -> dict:
    """Member i's variables in the layout of a one-network model."""
    return {
        col: {name: tree[f"members_{i}"] for name, tree in variables[col].items()}
        for col in variables
    }


def _images(n: int, shape: tuple[int, int, int], seed: int) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


def test_an_ensemble_is_its_members_side_by_side(tiny_config):
    """Embeddings are the members' concatenated, the score their mean logit, and the members
    start from distinct initialisations; one member is a one-network model."""
    cfg, single_cfg = tiny_config(model={"members": MEMBERS}), tiny_config()
    shape = models.input_shape(cfg)
    ensemble, single = models.create_model(cfg.model), models.create_model(single_cfg.model)
    variables = models.init_variables(ensemble, jax.random.key(0), shape)
    plain = models.init_variables(single, jax.random.key(0), shape)
    assert "members_0" not in plain["params"]["encoder"]  # One network: the layout of before.
    members = [_member(variables, i) for i in range(MEMBERS)]
    for m in members:  # Each member has exactly a one-network model's variables.
        assert jax.tree.structure(m) == jax.tree.structure(plain)
    # Distinct draws of every randomly initialised weight (biases and norm scales start constant).
    kernels = [
        [v for p, v in jax.tree_util.tree_leaves_with_path(m["params"]) if "kernel" in str(p)]
        for m in members
    ]
    assert kernels[0] and not any(np.allclose(a, b) for a, b in zip(*kernels, strict=True))

    x = _images(5, shape, 0)
    d = cfg.model.embedding_dim
    e = np.asarray(ensemble.apply(variables, x, method="embed"))
    assert e.shape == (5, MEMBERS * d) == (5, models.embedding_size(cfg.model))
    member_logits = []
    for i, m in enumerate(members):
        e_i = np.asarray(single.apply(m, x, method="embed"))
        # The same float32 operations on the same inputs: equal to rounding.
        np.testing.assert_allclose(e[:, i * d : (i + 1) * d], e_i, rtol=1e-5, atol=1e-6)
        member_logits.append(np.asarray(single.apply(m, e_i, e_i[::-1], method="score")))
    score = np.asarray(ensemble.apply(variables, e, e[::-1], method="score"))
    np.testing.assert_allclose(score, np.mean(member_logits, axis=0), rtol=1e-5, atol=1e-6)


def test_each_member_trains_as_if_alone(tiny_config):
    """One ensemble step on a batch moves every member exactly as one step of that member alone
    (its own pair and writer losses, same batch and augmentation) would; the loss reported is the
    members' mean."""
    overrides = dict(model={"writer_classes": 6})
    cfg = tiny_config(model={"writer_classes": 6, "members": MEMBERS})
    single_cfg = tiny_config(**overrides)
    for c in (cfg, single_cfg):
        c.writer_loss_weight = 0.5
    mesh = parallel.make_mesh(jax.devices()[:1])
    state, _ = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
    alone, _ = train_lib.init_state_on_mesh(single_cfg, models.create_model(single_cfg.model), mesh)
    h, w = models.input_shape(cfg)[:2]
    rng = np.random.default_rng(1)
    batch = {
        "image_a": _images(8, (h, w, 1), 2),
        "image_b": _images(8, (h, w, 1), 3),
        "label": jnp.asarray(np.tile([0, 1], 4), jnp.int32),
        "class_a": jnp.asarray(rng.integers(0, 6, 8), jnp.int32),
        "class_b": jnp.asarray(np.where(np.arange(8) % 2, rng.integers(0, 6, 8), -1), jnp.int32),
    }
    new, metrics = train_lib.train_step(state, batch, config=cfg)
    start = {"params": state.params, "batch_stats": state.batch_stats}
    after = {"params": new.params, "batch_stats": new.batch_stats}
    member_losses = []
    for i in range(MEMBERS):
        mine = _member(start, i)
        s = alone.replace(
            params=mine["params"],
            batch_stats=mine["batch_stats"],
            opt_state=alone.tx.init(mine["params"]),
            rng=state.rng,  # The same augmentation draws.
        )
        s_new, m = train_lib.train_step(s, batch, config=single_cfg)
        member_losses.append(float(m["train"].compute()["loss"]))
        # Gradients summed in another order: float32 rounding of values of order 1.
        for got, want in zip(
            jax.tree.leaves(_member(after, i)),
            jax.tree.leaves({"params": s_new.params, "batch_stats": s_new.batch_stats}),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    loss = float(metrics["train"].compute()["loss"])
    assert loss == pytest.approx(np.mean(member_losses), rel=1e-5)


def test_an_ensemble_trains_with_bce_only():
    losses.check_loss("bce", "absdiff", 3)
    with pytest.raises(UserError, match="members=3"):
        losses.check_loss("contrastive", "distance", 3)


def test_an_ensemble_run_trains_evaluates_and_exports(tiny_config, tmp_path):
    cfg = tiny_config(num_train_steps=4, model={"members": MEMBERS})
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(cfg, workdir)
    cfg.eval.references, cfg.eval.enrollment = 2, "svm_pair"
    eval_lib.run_evaluation(cfg, workdir, "validation")
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    assert 0.0 <= metrics["eer"] <= 1.0
    if importlib.util.find_spec("jax2onnx") is None:
        pytest.skip("the serve extra (jax2onnx, onnxruntime) is not installed")
    from siamjax import export

    contract = export.export(workdir, str(tmp_path / "onnx"))
    dim = MEMBERS * cfg.model.embedding_dim
    assert contract["encoder"]["output"]["shape"] == ["batch", dim]
    assert contract["export_check"]["max_abs_diff_scores"] < 1e-4
