"""Times each SigNet convolution alone (forward, input and weight gradient) under given XLA flags.

    python bench/conv_layers.py --flags=siamjax      # siamjax/xla_flags.py's (XNNPACK)
    python bench/conv_layers.py --flags=default      # XLA's defaults
    python bench/conv_layers.py \\
        --flags="--xla_cpu_experimental_ynn_fusion_type=individual_convolution"

Prints one JSON line: milliseconds per pass and layer (XLA's own convolution and its own
gradients; `--images` images; best of `--repeats`, a layer's passes interleaved by cpu_levers.py's
`interleaved`), and their total. XLA reads its flags once per
process, so compare flag sets by running this once per set, back to back (bench/README.md, "CPU
levers"). conv0 has no input gradient (its input is the image).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flags", default="siamjax", help="'siamjax', 'default' or XLA_FLAGS itself")
    p.add_argument("--images", type=int, default=64, help="batch of images (2 per pair)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    if a.flags == "siamjax":
        os.environ["XLA_FLAGS"] = ""
        from siamjax import xla_flags

        xla_flags.apply()
    else:
        os.environ["XLA_FLAGS"] = "" if a.flags == "default" else a.flags

    import jax
    import jax.numpy as jnp
    import numpy as np
    from cpu_levers import LAYERS, interleaved  # SigNet's convolutions; best-of timing.
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")
    rng = np.random.default_rng(0)
    ms = {}
    for name, hw, cin, cout, k, s, pads in LAYERS:
        x = jnp.asarray(rng.random((a.images, *hw, cin)), jnp.float32)
        w = jnp.asarray(rng.random((k, k, cin, cout)) * 0.01, jnp.float32)

        def conv(x, w, s=s, pads=pads):
            return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=dn)

        dy = jnp.ones_like(conv(x, w))
        passes = {
            "fwd": jax.jit(lambda x, w, dy, f=conv: f(x, w)),
            "dx": jax.jit(lambda x, w, dy, f=conv: jax.vjp(f, x, w)[1](dy)[0]),
            "dw": jax.jit(lambda x, w, dy, f=conv: jax.vjp(f, x, w)[1](dy)[1]),
        }
        if name == "conv0":  # Its input is the image: no input gradient.
            del passes["dx"]
        fns = {f"{name}_{tag}": fn for tag, fn in passes.items()}
        ms.update(interleaved(fns, (x, w, dy), a.repeats))
    total = round(sum(ms.values()), 1)
    print(
        json.dumps(
            {
                "benchmark": "conv_layers",
                "xla_flags": os.environ["XLA_FLAGS"],
                "images": a.images,
                **ms,
                "total_ms": total,
            }
        )
    )


if __name__ == "__main__":
    main()
