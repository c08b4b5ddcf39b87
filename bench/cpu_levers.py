"""The CPU levers of bench/README.md, each timed interleaved against XLA's own formulation.

    python bench/cpu_levers.py [--images 64] [--repeats 5]

Prints one JSON line per comparison (best of `repeats`, milliseconds): SigNet's convolution weight
gradients (XLA vs siamjax.conv), its max-pool gradients (XLA vs siamjax.pool), and the whole
SigNet train step at batch images/2 with conv_impl 'xla' vs 'matmul_dw'. Interleaving (A, B, A,
B, ...) lets both sides see the same load, so the ratios hold on a busy machine.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from siamjax import conv, pool  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
# name, input HxW, Cin, Cout, kernel, stride, padding: SigNet at 150x220.
LAYERS = [
    ("conv0", (150, 220), 1, 96, 11, 4, ((0, 0), (0, 0))),
    ("conv1", (17, 26), 96, 256, 5, 1, ((2, 2), (2, 2))),
    ("conv2", (8, 12), 256, 384, 3, 1, ((1, 1), (1, 1))),
    ("conv3", (8, 12), 384, 384, 3, 1, ((1, 1), (1, 1))),
    ("conv4", (8, 12), 384, 256, 3, 1, ((1, 1), (1, 1))),
]
POOLS = [("pool0", (35, 53, 96)), ("pool1", (17, 26, 256)), ("pool2", (8, 12, 256))]


def interleaved(fns: dict, args: tuple, repeats: int) -> dict:
    for f in fns.values():
        jax.block_until_ready(f(*args))
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            best[k] = min(best[k], time.perf_counter() - t0)
    return {f"{k}_ms": round(v * 1e3, 1) for k, v in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64, help="batch of images (2 per pair)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    for name, hw, cin, cout, k, s, pads in LAYERS:
        x = jnp.asarray(rng.random((a.images, *hw, cin)), jnp.float32)
        w = jnp.asarray(rng.random((k, k, cin, cout)) * 0.01, jnp.float32)
        dy = jnp.ones_like(lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=DN))
        fns = {
            "xla": jax.jit(
                lambda x, dy, w=w, s=s, pads=pads: jax.vjp(
                    lambda w_: lax.conv_general_dilated(x, w_, (s, s), pads, dimension_numbers=DN),
                    w,
                )[1](dy)[0]
            ),
            "matmul_dw": jax.jit(
                lambda x, dy, k=k, s=s, pads=pads: conv.weight_grad(x, dy, (k, k), (s, s), pads)
            ),
        }
        print(
            json.dumps(
                {"lever": "conv_weight_grad", "layer": name, **interleaved(fns, (x, dy), a.repeats)}
            ),
            flush=True,
        )
    for name, shape in POOLS:
        x = jnp.asarray(np.maximum(rng.normal(size=(a.images, *shape)), 0), jnp.float32)
        dy = jnp.ones_like(nn.max_pool(x, (3, 3), strides=(2, 2)))
        fns = {
            "xla": jax.jit(
                lambda x, dy: jax.vjp(lambda x_: nn.max_pool(x_, (3, 3), strides=(2, 2)), x)[1](dy)[
                    0
                ]
            ),
            "slices": jax.jit(
                lambda x, dy: jax.vjp(lambda x_: pool.max_pool(x_, (3, 3), (2, 2)), x)[1](dy)[0]
            ),
        }
        print(
            json.dumps(
                {"lever": "max_pool_grad", "pool": name, **interleaved(fns, (x, dy), a.repeats)}
            ),
            flush=True,
        )
    print(
        json.dumps(
            {"lever": "train_step", "batch": a.images // 2, **_steps(a.images // 2, a.repeats)}
        ),
        flush=True,
    )


def _steps(batch: int, repeats: int) -> dict:
    from configs import sigcomp
    from siamjax import models, parallel, train_lib

    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    shape = (batch, 150, 220, 1)
    data = parallel.to_global(
        {
            "image_a": rng.integers(0, 256, shape, dtype=np.uint8),
            "image_b": rng.integers(0, 256, shape, dtype=np.uint8),
            "label": rng.integers(0, 2, batch).astype(np.int32),
        },
        mesh,
    )
    steps = {}
    for impl in ("xla", "matmul_dw"):
        cfg = sigcomp.get_config()
        cfg.batch_size, cfg.model.conv_impl = batch, impl
        state, sharding = train_lib.init_state_on_mesh(cfg, models.create_model(cfg.model), mesh)
        steps[impl] = [train_lib.compile_train_step(cfg, mesh, sharding), state]

    def run(impl):
        def f(batch):
            fn, state = steps[impl]
            steps[impl][1], metrics = fn(state, batch)
            return metrics

        return f

    return interleaved({k: run(k) for k in steps}, (data,), repeats)


if __name__ == "__main__":
    main()
