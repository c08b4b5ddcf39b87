"""NaN/Inf steps stop training (or are skipped and counted) without reaching a checkpoint; SIGTERM
checkpoints the current step, flushes the writers and exits; a rerun continues exactly."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamjax import checkpointing, faults, parallel, train_lib, train_state
from siamjax import workdir as workdir_lib
from siamjax.errors import EXIT_NONFINITE, EXIT_PREEMPTED, NonFiniteError, Preempted

BAD_FROM = 6  # The step whose update first goes to infinity.


# A checkpoint every other step, all kept: which steps were saved is what these tests read.
CHECKPOINTS = {"checkpoint_every_steps": 2, "keep_checkpoints": 20}


@pytest.fixture
def inf_learning_rate_from_step_6(monkeypatch):
    """The learning rate becomes +inf at step BAD_FROM: that update makes the parameters
    non-finite (and every later loss NaN)."""

    def schedule(config, num_steps):
        return lambda count: jnp.where(count < BAD_FROM - 1, config.learning_rate, jnp.inf)

    monkeypatch.setattr(train_state, "learning_rate_schedule", schedule)


def _params(cfg, wd, step):
    _, variables, got, _ = workdir_lib.restore(cfg, wd, step, parallel.make_mesh())
    assert got == step
    return jax.device_get(variables["params"])


def _all_finite(tree):
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


def test_a_nan_stops_training_naming_the_step_and_saves_nothing_after(
    tiny_config, tmp_path, inf_learning_rate_from_step_6
):
    wd = str(tmp_path)
    cfg = tiny_config(**CHECKPOINTS, log_every_steps=4, num_train_steps=8)
    with pytest.raises(NonFiniteError, match=rf"^step {BAD_FROM}: .*NaN or Inf") as e:
        train_lib.train_and_evaluate(cfg, wd)
    assert "step 4" in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == EXIT_NONFINITE == 3
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    assert ckpt.all_steps() == [2, 4] and ckpt.latest_good_step() == 4
    ckpt.close()
    assert _all_finite(_params(cfg, wd, 4))


def test_skip_mode_skips_and_counts_nonfinite_steps(
    tiny_config, tmp_path, inf_learning_rate_from_step_6
):
    wd = str(tmp_path)
    cfg = tiny_config(**CHECKPOINTS, skip_nonfinite_steps=True, num_train_steps=8)
    summary = train_lib.train_and_evaluate(cfg, wd)
    skipped = 8 - BAD_FROM + 1
    assert summary["skipped_nonfinite_steps"] == skipped
    with open(os.path.join(wd, "summary.json")) as f:
        assert json.load(f)["skipped_nonfinite_steps"] == skipped
    final, before = _params(cfg, wd, 8), _params(cfg, wd, BAD_FROM - 2)
    assert _all_finite(final)
    # Step 5 changes the parameters, then nothing does: step 6's checkpoint equals step 8's.
    for x, y in zip(
        jax.tree.leaves(_params(cfg, wd, BAD_FROM)), jax.tree.leaves(final), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(final), strict=True)
    )
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    assert ckpt.restore_meta(8)["skipped_nonfinite_steps"] == skipped
    ckpt.close()


def test_the_step_keeps_the_old_state_exactly_when_not_finite():
    old = {"w": jnp.ones(3), "n": jnp.asarray(2)}
    new = {"w": jnp.asarray([1.0, jnp.nan, 3.0]), "n": jnp.asarray(3)}
    finite = faults.all_finite(new)
    assert not bool(finite)
    kept = faults.keep_if_finite(finite, new, old)
    np.testing.assert_array_equal(kept["w"], old["w"])
    assert int(kept["n"]) == 2
    assert bool(faults.all_finite(old, jnp.asarray(1.0)))
    flags = faults.step_flags(finite, jnp.asarray(7))
    assert int(flags[faults.NONFINITE]) == 1 and int(flags[faults.FIRST_NONFINITE]) == 7


def test_sigterm_checkpoints_the_step_and_flushes(tiny_config, tmp_path, monkeypatch):
    """In-process; tests/test_crash_resume.py checks train.py's exit code 143 and that the rerun
    continues and ends with exactly the parameters of an uninterrupted run."""
    cfg = tiny_config(
        **{**CHECKPOINTS, "checkpoint_every_steps": 100}, eval_every_steps=100, num_train_steps=8
    )
    calls = {"n": 0}
    take = parallel.GlobalBatches.__next__

    def sigterm_at_step_5(self):
        calls["n"] += 1
        if calls["n"] == 5:  # The signal arrives while the loop takes step 5's batch.
            os.kill(os.getpid(), signal.SIGTERM)
        return take(self)

    monkeypatch.setattr(parallel.GlobalBatches, "__next__", sigterm_at_step_5)
    wd = str(tmp_path / "preempted")
    with pytest.raises(Preempted, match="saved step 5") as e:
        train_lib.train_and_evaluate(cfg, wd)
    assert e.value.step == 5 and e.value.exit_code == EXIT_PREEMPTED == 143
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    assert ckpt.all_steps() == [5] and ckpt.step_problem(5) is None
    ckpt.close()
    events = [f for f in os.listdir(wd) if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(os.path.join(wd, events[0])) > 0  # Flushed (step 4 log).


def test_preemption_watcher_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    with faults.PreemptionWatcher() as w:
        assert not w.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert w.requested and w.should_stop(at_log_step=False)
    assert signal.getsignal(signal.SIGTERM) == before
