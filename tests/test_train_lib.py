"""train_and_evaluate end to end on the tiny synthetic config: resume, checkpoints, bad workdirs."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from siamjax import checkpointing, train_lib
from siamjax.errors import UserError


def _params(workdir, step):
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    meta = ckpt.restore_meta(step)
    ckpt.close()
    return meta


def _final_state(cfg, workdir):
    from siamjax import parallel
    from siamjax import workdir as workdir_lib

    _, variables, step, _ = workdir_lib.restore(
        cfg, str(workdir), cfg.num_train_steps, parallel.make_mesh()
    )
    return jax.device_get(variables), step


def test_resumed_training_equals_uninterrupted_training(tiny_run, tiny_config, tmp_path):
    full, full_dir = tiny_run  # The session's uninterrupted run of this config.
    assert full.to_dict() == tiny_config().to_dict()
    summary = json.loads(open(os.path.join(full_dir, "summary.json")).read())
    assert summary["final_step"] == 12 and np.isfinite(summary["validation"]["eer"])

    half = tiny_config(num_train_steps=7)  # Stops between two checkpoints' steps.
    train_lib.train_and_evaluate(half, str(tmp_path / "resumed"))
    train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "resumed"))

    a, step_a = _final_state(full, full_dir)
    b, step_b = _final_state(full, tmp_path / "resumed")
    assert step_a == step_b == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    # The workdir has what the README promises.
    wd = pathlib.Path(full_dir)
    assert (wd / "config.json").exists() and (wd / "summary.json").exists()
    assert (wd / "pairs" / "validation.json").exists() and (wd / "pairs" / "test.json").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))
    meta = _params(wd, 12)
    assert 0.0 <= meta["val_threshold"] <= 1.0 and meta["prior_positive"] == pytest.approx(0.5)


def test_checkpoints_keep_the_latest_and_the_best(tiny_config, tmp_path):
    cfg = tiny_config(num_train_steps=24, keep_checkpoints=1)
    cfg.eval_every_steps = 6
    cfg.checkpoint_every_steps = 6
    train_lib.train_and_evaluate(cfg, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path), read_only=True)
    steps = ckpt.all_steps()
    eers = {s: ckpt.restore_meta(s)["val_metrics"]["eer"] for s in steps}
    best = ckpt.best_step()
    ckpt.close()
    assert 24 in steps and best in steps and len(steps) <= 2
    assert eers[best] == min(eers.values())


def test_a_workdir_of_another_model_is_refused_and_left_alone(tiny_config, tmp_path):
    train_lib.train_and_evaluate(tiny_config(num_train_steps=6), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    config_before = (tmp_path / "config.json").read_text()
    other = tiny_config(num_train_steps=6)
    other.model.embedding_dim = 32
    with pytest.raises(UserError, match="different model.*embedding_dim"):
        train_lib.train_and_evaluate(other, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert (tmp_path / "config.json").read_text() == config_before
    assert json.loads(config_before)["model"]["embedding_dim"] == 16


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_an_unwritable_workdir_is_a_user_error(tiny_config, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(UserError, match="cannot be written"):
        train_lib.train_and_evaluate(tiny_config(), str(ro / "run"))


def test_a_workdir_under_a_file_is_a_user_error(tiny_config, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot be written"):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "file" / "run"))


@pytest.mark.parametrize("variant", ["", "smoke"])
def test_synthetic_pretraining_fits_the_encoder_it_starts(variant):
    """configs/synthetic_pretrain.py pretrains exactly the encoder (and input, and ink mode) of
    the real-data recipe it documents, so `config.init_from` accepts it; the ink mode counts."""
    from configs import cedar_best, synthetic_pretrain

    pre = synthetic_pretrain.get_config(variant)
    assert pre.dataset == "synthetic" and pre.synthetic.forgery_style == "skilled"
    fine = cedar_best.get_config(variant)
    fine.model.norm, fine.model.pool, fine.real.ink = "group", "gap", "normalized"
    fine.model.head_hidden = (32,)  # The head is the fine-tuning's own.
    assert train_lib.encoder_fingerprint(pre) == train_lib.encoder_fingerprint(fine)
    fine.real.ink = "raw"
    assert train_lib.encoder_fingerprint(pre) != train_lib.encoder_fingerprint(fine)


def test_init_from_takes_the_encoder_and_leaves_the_head(tiny_run):
    """config.init_from: pretraining's encoder (parameters and BatchNorm statistics) starts the
    run; the head keeps its fresh initialisation; another encoder is refused."""
    from siamjax import models, parallel
    from siamjax import workdir as workdir_lib

    source_cfg, source = tiny_run
    cfg = source_cfg.copy_and_resolve_references()
    cfg.model.head_hidden = (8,)  # Another head: allowed.
    mesh = parallel.make_mesh()
    fresh, _ = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh, 10)
    state = train_lib.init_encoder_from(fresh, cfg, source, mesh)
    pretrained = workdir_lib.restore(source_cfg, source, None, mesh).variables
    same = jax.tree.map(
        np.array_equal, jax.device_get(state.params["encoder"]), pretrained["params"]["encoder"]
    )
    assert all(jax.tree.leaves(same))
    stats = jax.tree.map(
        np.array_equal,
        jax.device_get(state.batch_stats["encoder"]),
        pretrained["batch_stats"]["encoder"],
    )
    assert all(jax.tree.leaves(stats))
    head = jax.tree.map(np.array_equal, state.params["head"], fresh.params["head"])
    assert all(jax.tree.leaves(head))
    other = cfg.copy_and_resolve_references()
    other.model.embedding_dim = 8
    with pytest.raises(UserError, match="init_from"):
        train_lib.init_encoder_from(fresh, other, source, mesh)
