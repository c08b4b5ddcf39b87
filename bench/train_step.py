"""Speed of the siamjax train step, comparable with ../shared/bench/torch_reference.py.

    python bench/train_step.py --config=configs/sigcomp.py --batch=32 --steps=20
    python bench/train_step.py --config=configs/sigcomp.py --batch=256 --dtype=bfloat16   # GPU

Random uint8 pairs, the real jitted step on every device (data parallel). Prints one JSON line:
impl, device, batch, median/min/max/mean step seconds, pairs/s (of the median step; also
`pairs_per_s_mean`), page faults and system/user CPU seconds per step, TFLOP/s (from the
reference's count of 7.23 GFLOP per SigNet pair when the encoder is signet at 150x220),
first-step (compile) seconds.
`measure(config, steps)` is the same measurement as a function; bench/run.py runs this script in a
subprocess per setting, so that each setting compiles and allocates in a fresh process.
"""

import json
import os
import resource
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/sigcomp.py", "Config file.", lock_config=True)
flags.DEFINE_integer("batch", 32, "Global pairs per step.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps).")
flags.DEFINE_string("dtype", None, "Override config.model.dtype (float32 / bfloat16).")
flags.DEFINE_string("out", None, "Also write the JSON line to this file.")

SIGNET_GFLOP_PER_PAIR = 7.23  # Forward + backward, from bench/torch_reference.py's count.
WARMUP_STEPS = 2  # After the first (compiling) step.


def is_signet_reference(config) -> bool:
    """Whether `config` is the network torch_reference.py counts 7.23 GFLOP per pair for."""
    size = (config.image_height, config.image_width)
    return config.model.encoder == "signet" and size == (150, 220)


def measure(config, steps: int) -> dict[str, Any]:
    """Times `steps` train steps of `config` (its batch_size and model.dtype) on random pairs.

    Call after `siamjax.entry.hide_gpus_from_tensorflow()`. Returns the dict this script prints.
    """
    import jax
    import numpy as np

    from siamjax import models, parallel, train_lib

    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    model = models.create_model(config.model)
    state, sharding = train_lib.init_state_on_mesh(config, model, mesh)
    step = train_lib.compile_train_step(config, mesh, sharding)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.image_height, config.image_width, 1)
    local = {
        "image_a": rng.integers(0, 256, shape, dtype=np.uint8),
        "image_b": rng.integers(0, 256, shape, dtype=np.uint8),
        "label": rng.integers(0, 2, config.batch_size).astype(np.int32),
    }
    batch = parallel.to_global(local, mesh)
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for _ in range(WARMUP_STEPS):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    mean = sum(times) / len(times)  # Before sorting: the same whatever the order.
    times.sort()
    med = times[len(times) // 2]
    pairs_per_s = config.batch_size / med
    tflops = pairs_per_s * SIGNET_GFLOP_PER_PAIR / 1e3 if is_signet_reference(config) else None
    return {
        "impl": f"siamjax-{config.model.encoder}-{config.model.dtype}",
        "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "batch": config.batch_size,
        "step_s_median": med,
        "step_s_min": times[0],
        "step_s_max": times[-1],
        "step_s_mean": mean,
        "pairs_per_s": pairs_per_s,
        # The rate a loop of these steps averages (noise included), as a run's wall time gives it.
        "pairs_per_s_mean": config.batch_size / mean,
        "tflops": tflops,
        "first_step_s": first,
        # The kernel's share: page faults (buffers mapped in anew) and system CPU per step.
        "page_faults_per_step": (after.ru_minflt - usage.ru_minflt) / steps,
        "system_cpu_s_per_step": (after.ru_stime - usage.ru_stime) / steps,
        "user_cpu_s_per_step": (after.ru_utime - usage.ru_utime) / steps,
        "final_loss": float(m["train"].compute()["loss"]),
    }


def main(argv):
    del argv
    from siamjax import entry

    entry.hide_gpus_from_tensorflow()
    cfg = FLAGS.config
    cfg.batch_size = FLAGS.batch
    if FLAGS.dtype:
        cfg.model.dtype = FLAGS.dtype
    line = json.dumps(measure(cfg, FLAGS.steps))
    print(line)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
