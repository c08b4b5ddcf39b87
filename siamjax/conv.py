"""A 2-D convolution whose weight gradient is a matrix product over shifted input windows.

Why: XLA:CPU (without XNNPACK) computes a convolution's weight gradient several times slower than
its forward pass, and on a CPU the train step is dominated by it (bench/README.md, "CPU levers").
The weight gradient of a stride-s, k x k convolution is

    dW[i, j, :, :] = sum over n, y, x of  X[n, s*y + i, s*x + j, :]^T  dY[n, y, x, :]

i.e. a plain matrix product of the k*k strided slices of the (padded) input with the output
gradient. Two forms of it, both exact:
- `patches`: the k*k slices stacked into one [N*OH*OW, k*k*Cin] matrix, one large matmul. Best
  when k*k*Cin is small (SigNet's first layer: 11*11*1), where per-slice matmuls would be tiny.
- `slices`: k*k matmuls [Cin, N*OH*OW] x [N*OH*OW, Cout] summed into place, no large buffer.
The forward pass and the input gradient stay XLA's own (they are fast). Accelerators keep XLA's
convolution untouched, and so does a CPU whose convolutions go through XNNPACK (`siamjax.xla_flags`,
which the entry points apply): there XLA's own weight gradient is faster than this one (see
`for_backend`).

Not for: dilated, grouped or non-NHWC convolutions; those fall back to `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
# Above this many columns (k*k*Cin) the `slices` form is used: a stacked patch matrix would be
# k*k times the input's size, and per-slice matmuls are already large enough to run at speed.
PATCHES_MAX_COLUMNS = 1024
CONV_IMPLS = ("xla", "matmul_dw", "auto")


def strided_window(
    x: jax.Array, i: int, j: int, s: tuple[int, int], out_hw: tuple[int, int]
) -> jax.Array:
    """The [N, OH, OW, C] window of x [N, H, W, C] that output position (y, x) reads at kernel
    offset (i, j) with strides s: x[:, i + s0*y, j + s1*x, :]. Shared with `siamjax.pool`."""
    n, _, _, c = x.shape
    oh, ow = out_hw
    end = (n, i + s[0] * (oh - 1) + 1, j + s[1] * (ow - 1) + 1, c)
    return lax.slice(x, (0, i, j, 0), end, (1, s[0], s[1], 1))


def _slices(
    x: jax.Array,
    k: tuple[int, int],
    s: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    out_hw: tuple[int, int],
) -> list:
    """The k_h*k_w strided windows of padded x, each [N, OH, OW, Cin], in (i, j) row-major order."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return [strided_window(xp, i, j, s, out_hw) for i in range(k[0]) for j in range(k[1])]


def weight_grad(
    x: jax.Array,
    dy: jax.Array,
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """dW of `conv(x, W)` for output gradient dy. x [N, H, W, Cin], dy [N, OH, OW, Cout] ->
    [kh, kw, Cin, Cout], accumulated in float32 and returned in x's dtype."""
    n, oh, ow, cout = dy.shape
    cin = x.shape[-1]
    kh, kw = kernel_hw
    windows = _slices(x, kernel_hw, strides, pads, (oh, ow))
    d = dy.reshape(n * oh * ow, cout)
    contract = functools.partial(jnp.einsum, "mk,mc->kc", preferred_element_type=jnp.float32)
    if kh * kw * cin <= PATCHES_MAX_COLUMNS:
        patches = jnp.stack(windows, axis=3).reshape(n * oh * ow, kh * kw * cin)
        dw = contract(patches, d)
    else:
        dw = jnp.stack([contract(w.reshape(n * oh * ow, cin), d) for w in windows])
    return dw.reshape(kh, kw, cin, cout).astype(x.dtype)


def _xla_conv(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """NHWC x HWIO convolution, equal to XLA's, with the matmul weight gradient."""
    return _xla_conv(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads):
    return _xla_conv(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, residuals, dy):
    x, w = residuals
    # XLA drops this input gradient where nobody uses it (the first layer's image input).
    _, x_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads), x)
    (dx,) = x_vjp(dy)
    return dx, weight_grad(x, dy, w.shape[:2], strides, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`): the
    plain 2-D NHWC case goes through `conv2d`, everything else through XLA unchanged."""
    plain = (
        lhs.ndim == 4
        and not any(d != 1 for d in (lhs_dilation or ()))
        and not any(d != 1 for d in (rhs_dilation or ()))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_nhwc(dimension_numbers)
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d(lhs, rhs, strides, pads)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _DN)
    return tuple(dimension_numbers) == _DN


def for_backend(impl: str, platform: str | None = None):
    """The convolution function for `config.model.conv_impl`: 'xla' (XLA's own), 'matmul_dw'
    (this module's) or 'auto': XLA's, except on a CPU whose convolutions do not go through
    XNNPACK (`siamjax.xla_flags` not applied), where this module's weight gradient is faster."""
    if impl not in CONV_IMPLS:
        from siamjax.errors import UserError

        raise UserError(f"config.model.conv_impl={impl!r}; use one of {CONV_IMPLS}.")
    if impl == "auto":
        from siamjax import xla_flags

        on_cpu = (platform or jax.default_backend()) == "cpu"
        impl = "matmul_dw" if on_cpu and not xla_flags.xnnpack_convolutions() else "xla"
    return conv_general_dilated if impl == "matmul_dw" else lax.conv_general_dilated
