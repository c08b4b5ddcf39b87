"""Where a train step's time goes: XLA:CPU's per-operation trace of a few steps, summed by name.

    python bench/profile_step.py --config=configs/sigcomp.py --batch=32 [--top 40]

Prints one JSON line: the step's wall time (`step_ms`, from the executor's own span) and the `top`
operations by time per step. Only operations that run synchronously are timed by their span
(loop fusions, YNNPACK fusions); XNNPACK's convolutions and matmuls show no span of their own, so
the step's time minus the listed operations' sum is roughly theirs. siamjax's XLA flags are applied
(`siamjax.xla_flags`; `--plain_xla` leaves them out), plus `--xla_cpu_enable_xprof_traceme=true`
for the trace.
"""

import collections
import glob
import gzip
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/sigcomp.py", "Config file.", lock_config=True)
flags.DEFINE_integer("batch", 32, "Global pairs per step.")
flags.DEFINE_integer("steps", 3, "Traced steps (after 3 untraced ones).")
flags.DEFINE_integer("top", 40, "Operations listed.")
flags.DEFINE_bool("plain_xla", False, "Leave siamjax's XLA flags out (XLA's defaults).")

WAIT_SPAN = "ThunkExecutor::Execute (wait for completion)"  # One per step: its wall time.
NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$")  # Executor and Python spans.


def main(argv):
    del argv
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()
    if not FLAGS.plain_xla:
        from siamjax import entry

        entry.hide_gpus_from_tensorflow()  # Applies siamjax's XLA flags too.
    import jax
    import numpy as np

    from siamjax import models, parallel, train_lib

    cfg = FLAGS.config
    cfg.batch_size = FLAGS.batch
    mesh = parallel.make_mesh()
    state, sharding = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
    step = train_lib.compile_train_step(cfg, mesh, sharding)
    rng = np.random.default_rng(0)
    shape = (cfg.batch_size, cfg.image_height, cfg.image_width, 1)
    batch = parallel.to_global(
        {
            "image_a": rng.integers(0, 256, shape, dtype=np.uint8),
            "image_b": rng.integers(0, 256, shape, dtype=np.uint8),
            "label": rng.integers(0, 2, cfg.batch_size).astype(np.int32),
        },
        mesh,
    )
    for _ in range(3):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(FLAGS.steps):
                state, m = step(state, batch)
            jax.block_until_ready(m)
        (path,) = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    us = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            us[e["name"]] += e.get("dur", 0)
    per_step_ms = {name: t / 1e3 / FLAGS.steps for name, t in us.items()}
    ops = {k: v for k, v in per_step_ms.items() if not k.startswith(NOT_OPS)}
    top = sorted(ops.items(), key=lambda kv: -kv[1])[: FLAGS.top]
    print(
        json.dumps(
            {
                "benchmark": "profile_step",
                "config": cfg.model.encoder,
                "batch": cfg.batch_size,
                "xla_flags": os.environ["XLA_FLAGS"],
                "step_ms": round(per_step_ms.get(WAIT_SPAN, float("nan")), 1),
                "traced_ops_ms": round(sum(ops.values()), 1),
                "top_ms": {k: round(v, 1) for k, v in top},
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
