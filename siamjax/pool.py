"""Max pooling whose gradient is written with slices and pads instead of XLA's select-and-scatter.

Why: on the CPU, XLA's select-and-scatter (the gradient of `reduce_window` max) runs many times
slower than the pooling itself; this form takes less than half its time on SigNet's pools
(bench/README.md, "CPU levers").
The gradient of a k x k, stride-s, VALID max pool sends each output gradient to the first maximum
of its window (row-major order), as select-and-scatter with `>=` does; here each of the k*k window
offsets claims the outputs whose maximum it holds and not claimed before, and scatters its share
back with an interior-padded `lax.pad`. The result equals XLA's gradient exactly.

Not for: padded ('SAME') pooling; `max_pool` falls back to flax's there.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from siamjax.conv import strided_window


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_valid(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    return nn.max_pool(x, window, strides=strides, padding="VALID")


def _fwd(x, window, strides):
    y = _max_pool_valid(x, window, strides)
    return y, (x, y)


def _bwd(window, strides, residuals, dy):
    x, y = residuals
    _, h, w, _ = x.shape
    oh, ow = y.shape[1:3]
    claimed = jnp.zeros(y.shape, bool)
    dx = jnp.zeros_like(x)
    zero = jnp.zeros((), dy.dtype)
    for i in range(window[0]):
        for j in range(window[1]):
            mine = (strided_window(x, i, j, strides, (oh, ow)) == y) & ~claimed
            claimed = claimed | mine
            part = jnp.where(mine, dy, zero)
            hi_h = h - i - (strides[0] * (oh - 1) + 1)
            hi_w = w - j - (strides[1] * (ow - 1) + 1)
            dx = dx + lax.pad(
                part,
                zero,
                ((0, 0, 0), (i, hi_h, strides[0] - 1), (j, hi_w, strides[1] - 1), (0, 0, 0)),
            )
    return (dx,)


_max_pool_valid.defvjp(_fwd, _bwd)


def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: str = "VALID",
    fast_grad: bool = True,
) -> jax.Array:
    """[N, H, W, C] -> [N, OH, OW, C] max pool; with `fast_grad` (VALID only) the gradient above."""
    if fast_grad and padding == "VALID":
        return _max_pool_valid(x, tuple(window), tuple(strides))
    # window_shape by keyword: jax2onnx (siamjax.export) replaces nn.max_pool while it traces by
    # a function that takes only keywords after the input.
    return nn.max_pool(x, window_shape=window, strides=strides, padding=padding)
