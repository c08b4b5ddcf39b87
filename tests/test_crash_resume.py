"""train.py killed with SIGKILL at random moments (start-up, between steps, in the middle of a
checkpoint save) and preempted once with SIGTERM, each time rerun with the same command, ends with
exactly the parameters of an uninterrupted run.

The order of the kills and their moments come from a seeded RNG; the compilation cache makes each
restart cheap. About 70 s on two busy cores: each restart pays Python, TensorFlow and JAX imports.
"""

import os
import random
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from siamjax import parallel
from siamjax import workdir as workdir_lib
from siamjax.errors import EXIT_PREEMPTED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each kind of kill at least once, in a seeded order, a SIGTERM halfway: five restarts cover them
# all (ten random draws had covered "between steps" once, for twice the time). A save is the
# likeliest moment to damage a checkpoint, so it gets two.
KILLS = ["startup", "between steps", "in a save", "in a save"]
STEPS = 60
OVERRIDES = {
    "num_train_steps": STEPS,
    "checkpoint_every_steps": 2,
    "eval_every_steps": 30,
    "log_every_steps": 10,
    "keep_checkpoints": 2,
}
READY = "training steps"  # Logged once the state is restored and training begins.
TMP_MARK = "orbax-checkpoint-tmp"  # orbax's name for a step directory being written.


def _variables(cfg, wd):
    _, variables, step, _ = workdir_lib.restore(cfg, wd, STEPS, parallel.make_mesh())
    assert step == STEPS
    return jax.device_get(variables)


class _Run:
    """One train.py process with its stderr in a file that the test polls."""

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.started = time.monotonic()

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, needle, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if needle in self.text():
                return True
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} within {timeout} s:\n{self.text()[-3000:]}")

    def finish(self, timeout=300):
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        return rc


def _tmp_dirs(ckpt_dir):
    """Step directories being written (after start-up: orbax removes older ones when it starts)."""
    return {n for n in os.listdir(ckpt_dir) if TMP_MARK in n} if os.path.isdir(ckpt_dir) else set()


def _latest(ckpt_dir):
    steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
    return max(steps, default=0)


def _wait_for_progress(run, ckpt_dir, after, timeout=120):
    """Until a step newer than `after` is committed: every such kill interrupts a resumed run."""
    deadline = time.monotonic() + timeout
    while _latest(ckpt_dir) <= after:
        assert run.proc.poll() is None, f"train.py exited:\n{run.text()[-3000:]}"
        assert time.monotonic() < deadline, f"no new checkpoint in {timeout} s"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(
    tiny_config, tfds_dir, tmp_path
):
    cfg = tiny_config(**OVERRIDES)  # On the session's TFDS dir: prepared at most once.
    reference = str(tmp_path / "reference")
    wd = str(tmp_path / "killed")
    ckpt_dir = os.path.join(wd, "checkpoints")

    def command(workdir):
        return [
            sys.executable,
            os.path.join(REPO, "train.py"),
            "--config=configs/synthetic.py:tiny",
            f"--workdir={workdir}",
            f"--config.tfds_data_dir={tfds_dir}",
        ] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]

    cmd = command(wd)
    # One CPU device (not the 8 the rest of the suite simulates): faster steps and compiles.
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        XLA_FLAGS="",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    # The uninterrupted run; it also fills the compilation cache.
    run = _Run(command(reference), env, str(tmp_path / "reference.log"))
    assert run.finish() == 0, run.text()[-3000:]
    rng = random.Random(20261128)
    plan = rng.sample(KILLS, len(KILLS))
    plan.insert(len(plan) // 2, "sigterm")
    kills, during_save, modes, preempted = 0, 0, [], False
    for attempt, mode in enumerate(plan, 1):
        before = _latest(ckpt_dir)
        run = _Run(cmd, env, str(tmp_path / f"run{attempt}.log"))
        if mode == "startup":  # Imports, compilation, restoring: anywhere before training.
            time.sleep(rng.uniform(0.5, 8.0))
        else:
            if not run.wait_for(READY, timeout=240):
                pytest.fail(
                    f"train.py ended before training (rc {run.finish()}):\n{run.text()[-3000:]}"
                )
            _wait_for_progress(run, ckpt_dir, before)
            if mode == "in a save":
                deadline = time.monotonic() + 10
                while not _tmp_dirs(ckpt_dir) and time.monotonic() < deadline:
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(0.0, 0.2))
        if mode == "sigterm":
            run.proc.send_signal(15)
            rc = run.finish()
            assert rc == EXIT_PREEMPTED, run.text()[-3000:]
            assert "preempted (SIGTERM): saved step" in run.text()
            assert not _tmp_dirs(ckpt_dir)  # The save it made is complete.
            preempted = True
            modes.append(mode)
            continue
        if run.proc.poll() is not None:  # Finished before the kill.
            pytest.fail(
                f"train.py exited (rc {run.finish()}) before kill {kills + 1}: use more steps"
            )
        run.proc.kill()
        run.finish()
        kills += 1
        if mode != "startup" and _tmp_dirs(ckpt_dir):
            during_save += 1
        modes.append(mode)

    run = _Run(cmd, env, str(tmp_path / "final.log"))
    assert run.finish() == 0, run.text()[-3000:]
    print(f"SIGKILLs survived: {kills} ({during_save} in the middle of a save); modes: {modes}")
    assert during_save >= 1, modes
    assert preempted
    a, b = _variables(cfg, reference), _variables(cfg, wd)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
