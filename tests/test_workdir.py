"""A workdir as a model: restoring reads parameters and BatchNorm statistics alone (the values the
trainer saved), and neither eval.py's library nor the verifier ever builds an optimiser."""

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from siamjax import checkpointing, eval_lib, models, parallel, train_state, verify
from siamjax import workdir as workdir_lib
from siamjax.datasets.synthetic import generator as synthetic
from siamjax.errors import UserError


def _full_state(cfg, wd, step):
    """The whole saved train state of `step`, restored the trainer's way (optimiser included)."""
    model = models.create_model(cfg.model)
    abstract = checkpointing.abstract_with_sharding(
        jax.eval_shape(lambda r: train_state.create_train_state(cfg, model, r), jax.random.key(0)),
        parallel.replicated(parallel.make_mesh()),
    )
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    try:
        return ckpt.restore(step, abstract)[0]
    finally:
        ckpt.close()


def test_restore_reads_the_saved_parameters_and_statistics_alone(tiny_run):
    cfg, wd = tiny_run
    restored = workdir_lib.restore(cfg, wd, None, parallel.make_mesh())
    assert set(restored.variables) == {"params", "batch_stats"}
    assert jax.tree.leaves(restored.variables["batch_stats"])  # The model has BatchNorm.
    full = _full_state(cfg, wd, restored.step)
    for key in ("params", "batch_stats"):
        got, want = jax.device_get(restored.variables[key]), jax.device_get(getattr(full, key))
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    assert restored.threshold == pytest.approx(restored.meta["val_threshold"])
    assert restored.prior_positive == pytest.approx(0.5)


@pytest.fixture
def no_optimizer(monkeypatch):
    """Building a train state, an optimiser or a learning-rate schedule raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("an optimiser was built for inference")

    for name in ("create_train_state", "make_optimizer", "learning_rate_schedule"):
        monkeypatch.setattr(train_state, name, refuse)
    for name in ("adagrad", "adam", "adamw", "sgd", "constant_schedule"):
        monkeypatch.setattr(optax, name, refuse)
    monkeypatch.setattr(optax, "warmup_cosine_decay_schedule", refuse)


def test_eval_and_verify_build_no_optimizer(tiny_run, no_optimizer, tmp_path):
    with pytest.raises(AssertionError, match="optimiser was built"):  # The trap is armed.
        train_state.make_optimizer(tiny_run[0])
    cfg, wd = tiny_run
    results = eval_lib.run_evaluation(cfg.copy_and_resolve_references(), wd, "validation")
    assert np.isfinite(results["eer"])
    ink = synthetic.render_genuine(synthetic.make_writer(5, 0), 0, 90, 150, 5, 0)
    for i in range(2):
        Image.fromarray(255 - np.roll(ink[..., 0], i, axis=1)).save(tmp_path / f"{i}.png")
    d = verify.Verifier(wd).verify(str(tmp_path / "0.png"), str(tmp_path / "1.png"))
    assert 0.0 <= d.score <= 1.0 and d.threshold == pytest.approx(results["threshold"])


def test_a_workdir_of_another_model_is_refused_before_reading(tiny_run):
    cfg, wd = tiny_run
    other = cfg.copy_and_resolve_references()
    other.model.embedding_dim *= 2
    with pytest.raises(UserError, match="different model.*embedding_dim"):
        workdir_lib.restore(other, wd, None, parallel.make_mesh())
    same = cfg.copy_and_resolve_references()
    same.model.conv_impl = "xla" if cfg.model.conv_impl != "xla" else "matmul_dw"
    assert workdir_lib.model_fingerprint(same) == workdir_lib.model_fingerprint(cfg)
