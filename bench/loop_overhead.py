"""What the training loop's per-step host work costs the step, measured in one process.

    python bench/loop_overhead.py [--config=configs/synthetic.py] [--block 30] [--rounds 16]

Alternates blocks of `--block` steps of four loops, `--rounds` times, in one process (the
machine's speed drifts within minutes, so both sides must share them):
  bare:     the jitted step on one fixed batch, nothing else (what bench/train_step.py times);
  inline:   each step's batch from TrainData (tf.data), sharded onto the mesh by the loop's own
            thread between steps (train_lib's loop before parallel.GlobalBatches);
  pipeline: the same batches made ahead by parallel.GlobalBatches' thread, as train_lib does;
  merged:   the pipeline plus the non-finite flags and metrics merged on the device every step
            (train_lib's loop before `merge_steps`) and the progress report;
  loop:     the pipeline plus what train_lib's loop does: each step's flags and metrics kept on
            the device, fetched and merged on the host at the block's end (a log step), and the
            progress report.
Prints one JSON line: the median pairs/s of each over the rounds, every round's, and
inline / bare, merged / bare and loop / bare. Validation, checkpoints and log steps are not in it
(summary.json's shares).
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Config file.", lock_config=True)
flags.DEFINE_integer("block", 30, "Steps per block.")
flags.DEFINE_integer("rounds", 16, "Blocks of each loop, alternated.")

KINDS = ("bare", "inline", "pipeline", "merged", "loop")


def main(argv):
    del argv
    from siamjax import entry

    entry.hide_gpus_from_tensorflow()
    import jax
    import jax.numpy as jnp
    from clu import periodic_actions
    from suite.common import commit_info  # bench/suite/, beside this file.

    from siamjax import faults, models, parallel, train_lib
    from siamjax.data import Data
    from siamjax.input_pipeline import TrainData

    cfg = FLAGS.config
    mesh = parallel.make_mesh()
    data = Data(cfg)
    train_data = TrainData(data, cfg)
    state, sharding = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
    step_fn = train_lib.compile_train_step(cfg, mesh, sharding, train_data.device_images(mesh))
    local = train_data.batches(0)
    fixed = parallel.to_global(next(local), mesh)
    ahead = parallel.GlobalBatches(train_data.batches(0), mesh, size=2)
    report = periodic_actions.ReportProgress(every_steps=10**9, every_secs=None)  # Never reports.
    reported = [0]

    def block(kind, state):
        guard, sums, acc, steps = faults.NonFiniteGuard(False), None, None, []
        t0 = time.perf_counter()
        for _ in range(FLAGS.block):
            if kind == "bare":
                batch = fixed
            elif kind == "inline":
                batch = parallel.to_global(next(local), mesh)
            else:
                batch = next(ahead)
            state, m = step_fn(state, batch)
            if kind == "merged":
                flags = (m[faults.NONFINITE], m[faults.FIRST_NONFINITE])
                acc = flags if acc is None else (acc[0] + flags[0], jnp.minimum(acc[1], flags[1]))
                sums = m["train"] if sums is None else sums.merge(m["train"])
            elif kind == "loop":
                steps.append(guard.add(m)["train"])
            if kind in ("merged", "loop"):
                reported[0] += 1
                report(reported[0])
        if kind == "merged":
            jax.device_get((sums, acc))[0].compute()
        elif kind == "loop":
            train_lib.merge_steps(steps).compute()
            guard.check(0, None, "")
        jax.block_until_ready(state.params)
        return state, FLAGS.block * cfg.batch_size / (time.perf_counter() - t0)

    for kind in KINDS:  # Compilation and warm-up.
        state, _ = block(kind, state)
    runs = {k: [] for k in KINDS}
    for _ in range(FLAGS.rounds):
        for kind in KINDS:
            state, rate = block(kind, state)
            runs[kind].append(round(rate, 1))
    ahead.close()
    median = {k: statistics.median(v) for k, v in runs.items()}
    print(
        json.dumps(
            {
                "benchmark": "loop_overhead",
                "config": cfg.model.encoder,
                "batch": cfg.batch_size,
                "block": FLAGS.block,
                "rounds": FLAGS.rounds,
                **{f"{k}_pairs_per_s": v for k, v in median.items()},
                "ratio_inline_over_bare": median["inline"] / median["bare"],
                "ratio_merged_over_bare": median["merged"] / median["bare"],
                "ratio_loop_over_bare": median["loop"] / median["bare"],
                "runs": runs,
                "commit": commit_info(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
