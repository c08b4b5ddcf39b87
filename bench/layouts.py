"""Training throughput (pairs/s) of process x device layouts on this host's CPU: 1x1, 1x8, 2x4.

    python bench/layouts.py --steps=20
    python bench/layouts.py --steps=20 --config=configs/synthetic.py:tiny --layouts=1x8,2x4

Each layout PxD runs in P fresh processes of D simulated CPU devices each
(`siamjax.parallel.run_cpu_processes`; jax.distributed over loopback, gloo collectives, when P > 1),
since a process's device count is fixed when JAX starts. Every process runs the real jitted,
data-parallel train step (`train_lib.init_state_on_mesh`, `compile_train_step`) on fixed random
pairs of the config's shape, putting its share of every global batch on the mesh with
`parallel.to_global`: the times include the host-to-device copies and the gradient all-reduce
across processes, not the tf.data pipeline. Simulated devices share the host's cores, so on a CPU
the layouts show what sharding and extra processes cost, not a speed-up.

Prints one JSON line per layout (process 0's timing; the all-reduce keeps the processes in step).
From Python (bench/run.py): `bench_layouts(steps)` returns the lines as dicts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/synthetic.py"  # The small encoder at 64x96, global batch 32.
DEFAULT_LAYOUTS = ((1, 1), (1, 8), (2, 4))
WARMUP_STEPS = 2


def _load_config(spec: str):
    """'configs/<name>.py[:variant]' -> its ConfigDict."""
    path, _, variant = spec.partition(":")
    sys.path.insert(0, REPO)
    name = os.path.splitext(os.path.relpath(os.path.join(REPO, path), REPO))[0]
    return importlib.import_module(name.replace(os.sep, ".")).get_config(variant)


def measure(config_spec: str, steps: int, batch: int | None) -> dict | None:
    """Times `steps` train steps in this process (one of a layout's); process 0's dict."""
    sys.path.insert(0, REPO)
    from siamjax import parallel

    parallel.maybe_initialize_distributed()
    import jax
    import numpy as np

    from siamjax import models, train_lib

    cfg = _load_config(config_spec)
    if batch:
        cfg.batch_size = batch
    mesh = parallel.make_mesh()
    parallel.check_batch_size(cfg.batch_size, mesh)
    model = models.create_model(cfg.model)
    state, sharding = train_lib.init_state_on_mesh(cfg, model, mesh)
    step = train_lib.compile_train_step(cfg, mesh, sharding)
    rows = cfg.batch_size // jax.process_count()
    rng = np.random.default_rng(jax.process_index())
    shape = (rows, cfg.image_height, cfg.image_width, 1)
    local = {
        "image_a": rng.integers(0, 256, shape, dtype=np.uint8),
        "image_b": rng.integers(0, 256, shape, dtype=np.uint8),
        "label": rng.integers(0, 2, rows).astype(np.int32),
    }
    t0 = time.perf_counter()
    state, m = step(state, parallel.to_global(local, mesh))
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    for _ in range(WARMUP_STEPS):
        state, m = step(state, parallel.to_global(local, mesh))
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, parallel.to_global(local, mesh))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    if jax.process_index():
        return None
    times.sort()
    med = times[len(times) // 2]
    return {
        "bench": "layouts",
        "layout": f"{jax.process_count()}x{jax.local_device_count()}",
        "processes": jax.process_count(),
        "devices_per_process": jax.local_device_count(),
        "platform": jax.devices()[0].platform,
        "config": config_spec,
        "batch": cfg.batch_size,
        "steps": steps,
        "step_s_median": med,
        "step_s_min": times[0],
        "step_s_max": times[-1],
        "pairs_per_s": cfg.batch_size / med,
        "first_step_s": first,
        "jax": jax.__version__,
    }


def bench_layouts(
    steps: int,
    layouts: tuple[tuple[int, int], ...] = DEFAULT_LAYOUTS,
    config: str = DEFAULT_CONFIG,
    batch: int | None = None,
    timeout: float = 600,
) -> list[dict]:
    """One dict per (processes, devices per process) layout, each run in fresh processes."""
    sys.path.insert(0, REPO)
    from siamjax import parallel

    out = []
    for processes, devices in layouts:
        argv = [sys.executable, os.path.abspath(__file__), "--worker", f"--steps={steps}"]
        argv += [f"--config={config}"] + ([f"--batch={batch}"] if batch else [])
        logs = parallel.run_cpu_processes(argv, processes, devices, timeout)
        lines = [x for x in logs[0].splitlines() if x.startswith('{"bench": "layouts"')]
        if not lines:
            tail = logs[0][-3000:]
            raise RuntimeError(f"layout {processes}x{devices} printed no result:\n{tail}")
        out.append(json.loads(lines[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="Timed steps (after warm-up).")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="configs/<name>.py[:variant]")
    ap.add_argument("--batch", type=int, default=None, help="Global batch (default: config's).")
    ap.add_argument("--layouts", default="1x1,1x8,2x4", help="PROCESSESxDEVICES, comma-separated.")
    ap.add_argument("--worker", action="store_true", help="Be one process of a layout (internal).")
    args = ap.parse_args()
    if args.worker:
        result = measure(args.config, args.steps, args.batch)
        if result:
            print(json.dumps(result), flush=True)
        return
    layouts = tuple(tuple(int(n) for n in x.split("x")) for x in args.layouts.split(","))
    for line in bench_layouts(args.steps, layouts, args.config, args.batch):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
