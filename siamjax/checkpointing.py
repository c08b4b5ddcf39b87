"""The only module that talks to orbax: save, find and restore training checkpoints.

A checkpoint is a step directory under `<workdir>/checkpoints` holding two items: `state` (the
whole TrainState: params, optimiser state, BatchNorm statistics, RNG, step) and `meta` (JSON:
calibration, validation metrics, the model config). Training restores the whole state; inference
restores a part of it (`partial=True`: parameters and BatchNorm statistics alone, so that no
optimiser is ever built to read a model). Kept: the latest `keep` steps plus the best by
validation EER. Saves are asynchronous; `wait()` before the process exits.

Damage: once a save has finished, this module writes `siamjax_digest.json` into its step directory
(every file's size and CRC-32, written aside and renamed). `restore_latest_good` checks a step's
digest, then restores it; a step whose files changed, went missing or do not restore is skipped
with a warning naming it and the step used instead (the newest good one). Steps without a digest
(a crash between orbax's commit and the digest, or an older siamjax) are judged by the restore
alone. The keep policy always keeps the newest step that has a digest, so a newer step that is
still unverified (in flight, or never finished) cannot cost the last good one. A save that fails
(a full disk, a read-only folder) becomes a `UserError` naming the folder; orbax writes into a
temporary directory and renames it only when complete, so nothing saved before is touched.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from siamjax.errors import UserError, one_line

BEST_METRIC = "val_eer"  # Lower is better.
DIGEST_FILE = "siamjax_digest.json"  # In each step directory, once its save has finished.


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files_under(step_dir: str) -> list[str]:
    out = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != DIGEST_FILE and not name.startswith("."):
                out.append(rel)
    return sorted(out)


def write_digest(step_dir: str) -> None:
    """Records every file's size and CRC-32 in <step_dir>/siamjax_digest.json (atomically)."""
    files = {
        rel: [os.path.getsize(os.path.join(step_dir, rel)), _crc32(os.path.join(step_dir, rel))]
        for rel in _files_under(step_dir)
    }
    tmp = os.path.join(step_dir, "." + DIGEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, DIGEST_FILE))


def check_digest(step_dir: str) -> str | None:
    """What is wrong with `step_dir` against its digest (None: intact, or no digest to check)."""
    path = os.path.join(step_dir, DIGEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {DIGEST_FILE} ({type(e).__name__})"
    for rel, (size, crc) in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != size:
            return f"{rel} has {os.path.getsize(full)} bytes, {size} were written"
        if _crc32(full) != crc:
            return f"{rel} has changed since it was written (CRC-32 mismatch)"
    return None


@dataclasses.dataclass
class _NewestVerified:
    """Preserves the newest step that has a digest: the last one known good."""

    directory: str

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        verified = [
            os.path.exists(os.path.join(self.directory, str(c.step), DIGEST_FILE))
            for c in checkpoints
        ]
        newest = max((i for i, v in enumerate(verified) if v), default=None)
        return [i == newest for i in range(len(checkpoints))]


def _storage_error(directory: str, e: OSError, reading: bool = False) -> UserError:
    """One line naming the folder; ENOSPC and EACCES say what to do."""
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.EPERM: "permission denied",
    }.get(e.errno, e.strerror or str(e))
    if reading:
        return UserError(f"cannot read the checkpoints in {directory}: {what}.")
    return UserError(
        f"cannot save a checkpoint in {directory}: {what}; the checkpoints saved "
        "before are intact (free space or fix permissions, then rerun to resume)."
    )


def _oserror_in(e: BaseException) -> OSError | None:
    """The OSError behind `e` (orbax and tensorstore wrap them), if any."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code))
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _best_fn(metrics: dict[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


class Checkpointer:
    """A CheckpointManager configured for siamjax's layout and preservation rules."""

    def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if read_only and not os.path.isdir(self.directory):
            raise UserError(
                f"{workdir} holds no checkpoints ({self.directory} does not exist): "
                "train first, or pass the workdir of a training run."
            )
        keep_policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                _NewestVerified(self.directory),
                policies.BestN(
                    get_metric_fn=_best_fn,
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            read_only=read_only,
            preservation_policy=None if read_only else keep_policy,
            best_fn=_best_fn,
            best_mode="min",
            create=not read_only,
            cleanup_tmp_directories=not read_only,  # Saves a crash interrupted: never restored.
            enable_async_checkpointing=not read_only,
        )
        if not read_only and os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise UserError(
                f"{self.directory} is a file, not a folder: cannot save checkpoints "
                "there; use another --workdir."
            )
        for attempt in range(5):
            try:
                self.manager = ocp.CheckpointManager(
                    self.directory, options=options, item_names=("state", "meta")
                )
                break
            except (FileNotFoundError, NotADirectoryError) as e:
                # A reader beside a trainer: a step was deleted between listing and reading it
                # (orbax's "exists, but is not a directory" is that race too: gone in between).
                if not read_only or attempt == 4:
                    raise _storage_error(self.directory, e, reading=read_only) from e
                time.sleep(0.05)
            except OSError as e:
                raise _storage_error(self.directory, e, reading=read_only) from e
        self._undigested: list[int] = []  # Steps this process saved and has not digested yet.
        self._writable = not read_only
        self._keep = keep

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None
    ) -> None:
        """Starts an asynchronous save of `state` and `meta` at `step` (force: every call saves).

        orbax first waits for the previous save, which is then digested. A failure to write
        (now or of the previous save) raises a UserError naming the folder.
        """
        self._guarded(self.manager.wait_until_finished)
        self._digest_finished()
        self._guarded(
            lambda: self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                metrics=metrics,
                force=True,
            )
        )
        self._undigested.append(step)

    def _guarded(self, fn):
        try:
            return fn()
        except Exception as e:
            err = _oserror_in(e)
            if err is None:
                raise
            raise _storage_error(self.directory, err) from e

    def _digest_finished(self) -> None:
        """Digests the steps this process saved whose saves have finished (committed)."""
        committed = set(self.manager.all_steps())
        for step in list(self._undigested):
            self._undigested.remove(step)
            step_dir = os.path.join(self.directory, str(step))
            # One writer (the primary process) on a shared file system.
            if step in committed and os.path.isdir(step_dir) and jax.process_index() == 0:
                try:
                    write_digest(step_dir)
                except OSError as e:
                    raise _storage_error(self.directory, e) from e

    def step_problem(self, step: int) -> str | None:
        """Why `step` cannot be trusted from its files alone (None: intact or undigested)."""
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            return "its directory is gone"
        return check_digest(step_dir)

    def latest_good_step(self) -> int | None:
        """The newest step whose files match their digest (undigested steps count as good here;
        `restore_latest_good` also tries to read them)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            if self.step_problem(step) is None:
                return step
        return None

    def restore_latest_good(
        self, abstract_state: Any, prefer: int | None = None, partial: bool = False
    ) -> tuple[int, Any, dict[str, Any]]:
        """(step, state, meta) of `prefer` (default: the latest step) or, when that one is
        damaged, of the newest step that is intact, with a warning naming both. `partial` as
        in `restore`.

        Raises a UserError when there is no checkpoint, or none restores (the error of the
        preferred step, e.g. a checkpoint of another model, names the folder).
        """
        for _ in range(3):
            try:
                return self._restore_latest_good(abstract_state, prefer, partial)
            except UserError as e:
                if " is gone" not in str(e):
                    raise
                # A trainer beside this reader deleted the steps listed: list them again.
                self.manager.reload()
                prefer = None
        return self._restore_latest_good(abstract_state, prefer, partial)

    def _restore_latest_good(
        self, abstract_state: Any, prefer: int | None, partial: bool
    ) -> tuple[int, Any, dict[str, Any]]:
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise UserError(f"{self.directory} holds no checkpoint.")
        first = prefer if prefer is not None else steps[0]
        order = [first] + [s for s in steps if s != first]
        failures: list[tuple[int, str, Exception | None]] = []
        for step in order:
            problem = self.step_problem(step)
            if problem is None:
                try:
                    state, meta = self.restore(step, abstract_state, partial)
                except Exception as e:  # noqa: BLE001 - any unreadable step is skipped.
                    problem, err = one_line(e, lines="first")[:300].split(": ", 1)[-1], e
                else:
                    if self._writable and not os.path.exists(
                        os.path.join(self.directory, str(step), DIGEST_FILE)
                    ):
                        # Committed, read back whole, but the process died before its digest.
                        self._undigested.append(step)
                        self._digest_finished()
                    if self._writable:
                        self._set_aside([s for s, _, _ in failures if s > step])
                    if failures:
                        bad = "; ".join(f"step {s}: {p}" for s, p, _ in failures)
                        logging.warning(
                            "checkpoint step %d in %s is damaged (%s); restored step "
                            "%d, the newest good one",
                            failures[0][0],
                            self.directory,
                            bad,
                            step,
                        )
                    return step, state, meta
            else:
                err = None
            failures.append((step, problem, err))
        err = failures[0][2]
        if isinstance(err, UserError):
            raise err
        bad = "; ".join(f"step {s}: {p}" for s, p, _ in failures)
        raise UserError(f"no checkpoint in {self.directory} can be restored ({bad}).") from err

    def restore(
        self, step: int, abstract_state: Any, partial: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

        With `partial`, `abstract_state` is a dict naming some of the saved state's fields (e.g.
        {"params", "batch_stats"}) and only those are read; the rest (optimiser state, RNG) is
        never loaded. A checkpoint of another model (other shapes or tree) becomes a UserError
        naming the folder.
        """
        if step not in self.manager.all_steps():
            raise UserError(
                f"no checkpoint of step {step} in {self.directory}; there are "
                f"{sorted(self.manager.all_steps())}."
            )
        problem = self.step_problem(step)
        if problem:
            raise UserError(
                f"the checkpoint in {self.directory} (step {step}) is damaged: {problem}."
            )
        if partial:
            state_args = ocp.args.PyTreeRestore(
                item=abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                partial_restore=True,
            )
        else:
            state_args = ocp.args.StandardRestore(abstract_state)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError, TypeError) as e:
            first = one_line(e, lines="first")
            raise UserError(
                f"the checkpoint in {self.directory} (step {step}) does not fit this "
                f"model's config: {first[:300]}"
            ) from e
        except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exception on bad files.
            raise UserError(
                f"the checkpoint in {self.directory} (step {step}) cannot be read "
                f"(damaged?): {one_line(e, lines='first')[:300]}"
            ) from e
        return restored["state"], dict(restored["meta"])

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged steps newer than the one training resumes from to
        <workdir>/damaged_checkpoints/ (kept for inspection), so that their steps can be saved
        again.

        Process 0 moves them; with several processes, every process then waits for the move
        (a barrier that each reaches, whichever steps it found damaged: one that listed the
        steps after the move found none) and lists the steps again, or its manager would still
        hold the moved step and refuse to save it anew (StepAlreadyExistsError).
        """
        if steps and jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                if os.path.isdir(src):
                    dst = os.path.join(aside, f"{step}.{len(os.listdir(aside))}")
                    os.replace(src, dst)
                    logging.warning("moved the damaged checkpoint step %d to %s", step, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("siamjax_checkpoints_set_aside")
        if steps or jax.process_count() > 1:
            self.manager.reload()

    def restore_meta(self, step: int) -> dict[str, Any]:
        return dict(
            self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        )

    def wait(self) -> None:
        self._guarded(self.manager.wait_until_finished)
        self._digest_finished()
        if self._writable and jax.process_count() == 1:  # Several: orbax prunes at the next save.
            self._prune()

    def _prune(self) -> None:
        """Applies the keep rules once the last save is digested: orbax applies them only while
        saving, when the newest step was not yet verified and an older one was kept for it."""
        steps = sorted(self.manager.all_steps())
        verified = [
            s for s in steps if os.path.exists(os.path.join(self.directory, str(s), DIGEST_FILE))
        ]
        keep = (
            set(steps[max(len(steps) - self._keep, 0) :])
            | {self.manager.best_step()}
            | set(verified[-1:])
        )
        for step in steps:
            if step not in keep:
                self.manager.delete(step)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def abstract_with_sharding(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of a state with one sharding, for restoring straight onto the mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
