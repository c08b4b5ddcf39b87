"""Damaged checkpoints are detected and skipped; full or unwritable disks give one line and damage
nothing; an evaluator reading beside a saving trainer never sees half a checkpoint."""

import errno
import logging
import os
import shutil
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from siamjax import checkpointing, eval_lib, parallel, train_lib, train_state
from siamjax import workdir as workdir_lib
from siamjax.errors import EXIT_PREEMPTED, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Checkpoints at 4, 6 (validation), 8 and 12 of the tiny run's 12 steps, all kept.
CHECKPOINTS = {"checkpoint_every_steps": 4, "keep_checkpoints": 3}


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory):
    """An uninterrupted 12-step run with checkpoints at 4, 6 (validation), 8 and 12."""
    wd = str(tmp_path_factory.mktemp("trained"))
    train_lib.train_and_evaluate(tiny_config(**CHECKPOINTS), wd)
    return wd


def _copy(src, tmp_path):
    dst = str(tmp_path / "wd")
    shutil.copytree(src, dst)
    return dst


def _abstract(cfg):
    from siamjax import models

    model = models.create_model(cfg.model)
    return checkpointing.abstract_with_sharding(
        jax.eval_shape(lambda r: train_state.create_train_state(cfg, model, r), jax.random.key(0)),
        parallel.replicated(parallel.make_mesh()),
    )


def _largest_array_file(step_dir):
    files = []
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        files += [
            os.path.join(root, n) for n in names if os.sep + "d" + os.sep in os.path.join(root, n)
        ]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 3)


def _garbage(step_dir):
    # orbax itself reads these bytes back without complaint: only the digest catches them.
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(range(64)))


DAMAGE = {
    "truncated array file": _truncate,
    "garbage bytes": _garbage,
    "missing state metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "missing meta": lambda d: os.remove(os.path.join(d, "meta", "metadata")),
    "garbage meta": lambda d: open(os.path.join(d, "meta", "metadata"), "wb").write(b"\0{x"),
}


def test_finished_saves_carry_a_digest_that_matches(trained):
    ckpt = checkpointing.Checkpointer(trained, read_only=True)
    steps = ckpt.all_steps()
    assert steps == [4, 6, 8, 12] or set(steps) >= {8, 12}
    for s in steps:
        d = os.path.join(ckpt.directory, str(s))
        assert os.path.exists(os.path.join(d, checkpointing.DIGEST_FILE))
        assert checkpointing.check_digest(d) is None
    assert ckpt.latest_good_step() == 12
    ckpt.close()


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_good_one(
    trained, tiny_config, tmp_path, kind, caplog
):
    wd = _copy(trained, tmp_path)
    DAMAGE[kind](os.path.join(wd, "checkpoints", "12"))
    cfg = tiny_config(**CHECKPOINTS)
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    with caplog.at_level(logging.WARNING):
        step, state, meta = ckpt.restore_latest_good(_abstract(cfg))
    ckpt.close()
    assert step == 8 and meta["step"] == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "step 12" in warning and "restored step 8" in warning


def test_digest_names_what_changed(trained, tmp_path):
    wd = _copy(trained, tmp_path)
    d = os.path.join(wd, "checkpoints", "12")
    _garbage(d)
    assert "CRC-32" in checkpointing.check_digest(d)
    damaged = _largest_array_file(d)
    _truncate(d)
    assert "bytes" in checkpointing.check_digest(d)
    # The same file: truncated, it may no longer be the largest (seen in a suite run).
    os.remove(damaged)
    assert f"{os.path.relpath(damaged, d)} is missing" == checkpointing.check_digest(d)


def test_training_resumes_from_the_newest_good_checkpoint_exactly(trained, tiny_config, tmp_path):
    wd = _copy(trained, tmp_path)
    _garbage(os.path.join(wd, "checkpoints", "12"))
    cfg = tiny_config(**CHECKPOINTS)
    train_lib.train_and_evaluate(cfg, wd)  # Restores 8, sets 12 aside, trains 9..12 again.
    assert os.listdir(os.path.join(wd, "damaged_checkpoints")) == ["12.0"]
    a = _restore(cfg, trained, 12)
    b = _restore(cfg, wd, 12)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _restore(cfg, wd, step):
    _, variables, got, _ = workdir_lib.restore(cfg, wd, step, parallel.make_mesh())
    assert got == step
    return jax.device_get(variables)


def test_eval_falls_back_when_the_best_checkpoint_is_damaged(trained, tiny_config, tmp_path):
    wd = _copy(trained, tmp_path)
    cfg = tiny_config(**CHECKPOINTS)
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    best = ckpt.best_step()
    ckpt.close()
    _truncate(os.path.join(wd, "checkpoints", str(best)))
    _, _, step, _ = workdir_lib.restore(cfg, wd, None, parallel.make_mesh())
    assert step == 12 != best
    with pytest.raises(UserError):  # An explicit step is that step or an error.
        workdir_lib.restore(cfg, wd, best, parallel.make_mesh())


def test_no_good_checkpoint_is_one_user_error_naming_each(trained, tiny_config, tmp_path):
    wd = _copy(trained, tmp_path)
    ckpt_dir = os.path.join(wd, "checkpoints")
    for s in os.listdir(ckpt_dir):
        _garbage(os.path.join(ckpt_dir, s))
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    with pytest.raises(UserError, match=r"no checkpoint in .* can be restored.*step 12.*step 8"):
        ckpt.restore_latest_good(_abstract(tiny_config(**CHECKPOINTS)))
    ckpt.close()


def test_keep_policy_keeps_the_newest_verified_step(tmp_path):
    policy = checkpointing._NewestVerified(str(tmp_path))
    for s in (2, 4):
        (tmp_path / str(s)).mkdir()
        (tmp_path / str(s) / checkpointing.DIGEST_FILE).write_text("{}")
    (tmp_path / "6").mkdir()  # In flight: no digest yet.
    infos = [types.SimpleNamespace(step=s) for s in (2, 4, 6)]
    assert list(policy.should_preserve(infos, context=None)) == [False, True, False]


# ---- storage ---------------------------------------------------------------------------------


def test_a_failed_save_is_one_line_naming_the_folder_and_keeps_what_was_saved(
    trained, tiny_config, tmp_path, monkeypatch
):
    """ENOSPC injected into the save (for machines where no small file system can be mounted;
    the tmpfs test below fills a real disk through train_and_evaluate)."""
    wd = _copy(trained, tmp_path)
    before = sorted(os.listdir(os.path.join(wd, "checkpoints")))
    ckpt = checkpointing.Checkpointer(wd, keep=3)
    step, state, meta = ckpt.restore_latest_good(_abstract(tiny_config(**CHECKPOINTS)))

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", full)
    with pytest.raises(UserError) as e:
        ckpt.save(16, state, meta)
    monkeypatch.undo()
    ckpt.close()
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(wd, "checkpoints") in msg and "disk is full" in msg
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == before
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    assert all(ckpt.step_problem(s) is None for s in ckpt.all_steps())
    assert ckpt.restore_latest_good(_abstract(tiny_config(**CHECKPOINTS)))[0] == step == 12
    ckpt.close()


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    os.makedirs(path, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_disk_that_fills_during_training_stops_it_cleanly(tiny_config, tmp_path):
    """A real full disk: a 2 MiB tmpfs (needs root; skipped elsewhere)."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        wd = str(mnt / "run")
        cfg = tiny_config(
            num_train_steps=200,
            checkpoint_every_steps=2,
            keep_checkpoints=200,
            eval_every_steps=1000,
            log_every_steps=50,
        )
        with pytest.raises(UserError) as e:
            train_lib.train_and_evaluate(cfg, wd)
        msg = str(e.value)
        assert "\n" not in msg and wd in msg, msg
        ckpt = checkpointing.Checkpointer(wd, read_only=True)
        steps = ckpt.all_steps()
        assert steps, "nothing fitted before the disk was full"
        good = [s for s in steps if ckpt.step_problem(s) is None]
        step, _, _ = ckpt.restore_latest_good(_abstract(cfg))
        assert step == max(good)
        ckpt.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_an_unwritable_checkpoint_folder_is_one_line(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "checkpoints").write_text("not a folder")
    with pytest.raises(UserError) as e:
        checkpointing.Checkpointer(str(wd))
    assert "\n" not in str(e.value) and str(wd / "checkpoints") in str(e.value)


# ---- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("race", [FileNotFoundError, NotADirectoryError])
def test_a_reader_lists_again_when_a_step_vanishes_while_it_lists(trained, race, monkeypatch):
    """A trainer deletes an old step while a reader lists them: orbax then raises
    FileNotFoundError, or NotADirectoryError when the folder existed a moment before its
    is_dir check (seen in CI). The reader lists again instead of failing."""
    real, calls = checkpointing.ocp.CheckpointManager, []

    def vanishing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise race(f"Path is not a directory: {trained}/checkpoints/4")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", vanishing_once)
    ckpt = checkpointing.Checkpointer(trained, read_only=True)
    assert len(calls) == 2 and ckpt.latest_step() == 12
    ckpt.close()


def test_a_reader_that_cannot_list_says_so_in_one_line(trained, monkeypatch):
    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", unreadable)
    with pytest.raises(UserError, match="cannot read the checkpoints in .*permission denied"):
        checkpointing.Checkpointer(trained, read_only=True)


@pytest.mark.slow
def test_eval_and_verify_beside_a_saving_trainer(trained, tfds_dir, tiny_config, tmp_path):
    """train.py saves every step while this process restores the newest good checkpoint again and
    again, runs what eval.py runs and what siamjax-verify runs: every restore is whole and the
    trainer, preempted at the end, exits as it should with an intact last checkpoint."""
    wd = str(tmp_path / "run")
    shutil.copytree(trained, wd)  # Checkpoints to read from the start; training continues.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = ""
    trainer = subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "train.py"),
            "--config=configs/synthetic.py:tiny",
            f"--workdir={wd}",
            f"--config.tfds_data_dir={tfds_dir}",
            "--config.num_train_steps=100000",
            "--config.checkpoint_every_steps=1",
            "--config.keep_checkpoints=2",
            "--config.eval_every_steps=50",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cfg = tiny_config(**CHECKPOINTS)
    seen, restores = set(), 0
    try:
        from PIL import Image

        from siamjax import verify

        img = os.path.join(tmp_path, "sig.png")
        page = np.full((60, 90), 255, np.uint8)
        page[20:40, 10:80] = np.random.default_rng(0).integers(0, 60, (20, 70))
        Image.fromarray(page).save(img)
        deadline = time.time() + 300
        while trainer.poll() is None and time.time() < deadline and (restores < 8 or len(seen) < 3):
            ckpt = checkpointing.Checkpointer(wd, read_only=True)
            step, state, meta = ckpt.restore_latest_good(_abstract(cfg))
            ckpt.close()
            assert meta["step"] == step
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state)))
            seen.add(step)
            restores += 1
            if restores == 3:  # What eval.py runs: the best (or newest good) step, a split.
                metrics = eval_lib.run_evaluation(cfg, wd, "validation")
                assert 0.0 <= metrics["eer"] <= 1.0
            if restores == 5:  # What siamjax-verify runs.
                assert verify.main(["--workdir", wd, "--reference", img, "--questioned", img]) == 0
        assert trainer.poll() is None, trainer.stderr.read()[-3000:]
        trainer.send_signal(15)
        _, stderr = trainer.communicate(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert restores >= 8 and len(seen) >= 3, (restores, seen)
    ckpt = checkpointing.Checkpointer(wd, read_only=True)
    last = ckpt.latest_step()
    assert last > max(seen) and ckpt.step_problem(last) is None
    assert ckpt.restore_latest_good(_abstract(cfg))[0] == last
    ckpt.close()


def test_a_read_only_workdir_is_one_line_naming_it(tiny_config, tmp_path):
    """A real read-only file system (a tmpfs mounted read-only; needs root, skipped elsewhere)."""
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(UserError, match=r"cannot be written.*[Rr]ead-only") as e:
            train_lib.train_and_evaluate(tiny_config(**CHECKPOINTS), str(mnt / "run"))
        assert "\n" not in str(e.value) and str(mnt / "run") in str(e.value)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
