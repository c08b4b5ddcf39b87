"""One process of tests/test_distributed.py: a short train_and_evaluate run, and what it produced.

    python tests/distributed_worker.py WORKDIR TFDS_DIR STEPS OUT_{pid}.npz [CHECKPOINT_EVERY]

Launched by `siamjax.parallel.run_cpu_processes` (and imported by the test for the
single-process reference run). Trains the tiny synthetic config for STEPS steps through
`train_lib.train_and_evaluate` (sharded batches, the gradient all-reduce across processes,
validation, an orbax checkpoint that every process writes), then restores that checkpoint and
saves to OUT_{pid}.npz, {pid} being the process index, the training loss of every step it ran
(from the checkpoint it resumed from, if the workdir holds one), the validation metrics and every
parameter and BatchNorm statistic, named by its path. CHECKPOINT_EVERY (default STEPS) is the
checkpoint cadence.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(
    workdir: str, tfds_dir: str, steps: int, checkpoint_every: int | None = None
) -> dict[str, np.ndarray]:
    """Trains in `workdir`; {'loss': [steps run], 'steps': [steps run], 'val_<metric>': [],
    'var/<path>': array, ...}."""
    import jax
    from clu import metric_writers

    from configs import synthetic
    from siamjax import parallel, train_lib
    from siamjax import workdir as workdir_lib

    cfg = synthetic.get_config("tiny")
    cfg.tfds_data_dir = tfds_dir
    cfg.num_train_steps = steps
    cfg.log_every_steps = 1
    cfg.eval_every_steps = steps
    cfg.checkpoint_every_steps = checkpoint_every or steps
    cfg.augment.noise_std = 0.05  # The augmentation RNG must agree across layouts too.

    # Every process records the loss its own writer is given (process 0's also goes to disk).
    losses: dict[int, float] = {}
    create = metric_writers.create_default_writer

    def recording_writer(*args, **kwargs):
        writer = create(*args, **kwargs)
        write = writer.write_scalars

        def write_scalars(step, scalars):
            if "train_loss" in scalars:
                losses[int(step)] = float(scalars["train_loss"])
            return write(step, scalars)

        writer.write_scalars = write_scalars
        return writer

    metric_writers.create_default_writer = recording_writer
    try:
        summary = train_lib.train_and_evaluate(cfg, workdir)
    finally:
        metric_writers.create_default_writer = create
    mesh = parallel.make_mesh()
    _, variables, step, _ = workdir_lib.restore(cfg, workdir, steps, mesh)
    ran = sorted(losses)
    assert step == steps and ran == list(range(ran[0], steps + 1)), (step, losses)
    out = {
        "loss": np.array([losses[s] for s in ran], np.float64),
        "steps": np.array(ran, np.int64),
    }
    for k in ("eer", "auc", "threshold"):
        out[f"val_{k}"] = np.float64(summary["validation"][k])
    for path, x in jax.tree_util.tree_leaves_with_path(variables):
        # Replicated: every process holds the whole array on each of its devices.
        out["var" + jax.tree_util.keystr(path)] = np.asarray(x.addressable_data(0))
    return out


def main(argv: list[str]) -> None:
    workdir, tfds_dir, steps, out, *every = argv[1:]
    result = run(workdir, tfds_dir, int(steps), int(every[0]) if every else None)
    import jax

    np.savez(out.format(pid=jax.process_index()), **result)


if __name__ == "__main__":
    main(sys.argv)
