"""The CPU fast paths (siamjax.conv, siamjax.pool) give XLA's results: values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import sigcomp
from siamjax import conv, models, pool

DN = ("NHWC", "HWIO", "NHWC")


def _rel_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


# (input HxW, Cin, Cout, kernel, stride, padding): SigNet's layer kinds at small sizes, covering
# both the stacked-patches branch (k*k*Cin <= 1024) and the per-slice branch.
LAYERS = [
    ((39, 55), 1, 6, 11, 4, "VALID"),  # SigNet conv0: 11x11 stride 4, patches
    ((9, 13), 48, 8, 5, 1, ((2, 2), (2, 2))),  # SigNet conv1: 5x5 pad 2, slices (1200 columns)
    ((8, 12), 16, 8, 3, 1, ((1, 1), (1, 1))),  # 3x3 pad 1, patches
    ((8, 12), 160, 4, 3, 1, "SAME"),  # 3x3, slices, string padding
    ((10, 15), 3, 5, 3, 2, "SAME"),  # strided SAME (small encoder), asymmetric padding
]


@pytest.mark.parametrize("hw,cin,cout,k,s,pad", LAYERS)
def test_conv_value_and_gradients_equal_xla(hw, cin, cout, k, s, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / k, jnp.float32)
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DN)

    def loss(fn, x, w):
        y = fn(x, w, (s, s), pad, dimension_numbers=dims)
        return jnp.sum(jnp.sin(y)), y

    (l_ref, y_ref), g_ref = jax.value_and_grad(
        lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1), has_aux=True
    )(x, w)
    (l_new, y_new), g_new = jax.jit(
        jax.value_and_grad(
            lambda x, w: loss(conv.conv_general_dilated, x, w), argnums=(0, 1), has_aux=True
        )
    )(x, w)
    assert _rel_err(y_new, y_ref) < 1e-6
    assert abs(float(l_new - l_ref)) <= 1e-5 * abs(float(l_ref))
    assert _rel_err(g_new[0], g_ref[0]) < 1e-5  # input gradient (XLA's own)
    assert _rel_err(g_new[1], g_ref[1]) < 1e-5  # weight gradient (the matmul form)


def test_unsupported_convolutions_fall_back_to_xla():
    x = jnp.ones((1, 9, 9, 4))
    w = jnp.ones((3, 3, 2, 4))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    grouped = conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2
    )
    ref = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=2
    )
    np.testing.assert_array_equal(grouped, ref)


def test_conv_impl_choice():
    # 'auto' depends on XLA_FLAGS: tests/test_xla_flags.py.
    assert conv.for_backend("matmul_dw", "gpu") is conv.conv_general_dilated
    assert conv.for_backend("xla", "cpu") is lax.conv_general_dilated
    with pytest.raises(Exception, match="conv_impl"):
        conv.for_backend("fast")


@pytest.mark.parametrize(
    "shape,window,stride",
    [((2, 35, 53, 4), 3, 2), ((2, 17, 26, 3), 3, 2), ((3, 12, 18, 5), 2, 2), ((1, 9, 9, 2), 3, 1)],
)
def test_max_pool_gradient_equals_select_and_scatter(shape, window, stride):
    # Rounded ReLU outputs: many ties inside windows, where the first maximum must win.
    x = jnp.asarray(np.maximum(np.random.default_rng(1).normal(size=shape), 0).round(1))

    def loss(fn):
        return lambda x: jnp.sum(jnp.cos(fn(x)) * jnp.arange(fn(x).size).reshape(fn(x).shape))

    ref = jax.grad(loss(lambda x: nn.max_pool(x, (window,) * 2, strides=(stride,) * 2)))(x)
    new = jax.jit(jax.grad(loss(lambda x: pool.max_pool(x, (window,) * 2, (stride,) * 2))))(x)
    # Same routing (which input receives each output's gradient), same values up to the order in
    # which overlapping windows' shares are added.
    np.testing.assert_array_equal(new != 0, ref != 0)
    np.testing.assert_allclose(new, ref, rtol=1e-6, atol=0)


def test_signet_loss_and_gradients_match_the_plain_formulation():
    """The whole SigNet (convs, pools, BatchNorm, head) with the CPU fast paths equals XLA's."""
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.integers(0, 256, (2, 100, 150, 1)), jnp.uint8)
    b = jnp.asarray(rng.integers(0, 256, (2, 100, 150, 1)), jnp.uint8)
    label = jnp.asarray([1.0, 0.0])
    results = {}
    for impl in ("xla", "matmul_dw"):
        cfg = sigcomp.get_config().model
        cfg.conv_impl = impl
        model = models.create_model(cfg)
        variables = model.init({"params": jax.random.key(0)}, a, b, train=False)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                a,
                b,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.mean(optax_bce(logits, label))

        results[impl] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    (l_ref, g_ref), (l_new, g_new) = results["xla"], results["matmul_dw"]
    assert abs(float(l_new - l_ref)) <= 1e-5 * abs(float(l_ref))
    # Relative to each leaf's scale; conv biases in front of BatchNorm have an exactly-zero true
    # gradient (BN removes them), so their float noise is compared to the overall gradient scale.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_ref))
    leaves = zip(jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g_new), strict=True)
    for (path, ref), new in leaves:
        err = float(jnp.max(jnp.abs(new - ref)))
        assert err <= 1e-5 * float(jnp.max(jnp.abs(ref))) + 1e-6 * scale, jax.tree_util.keystr(path)


def optax_bce(logits, labels):
    import optax

    return optax.sigmoid_binary_cross_entropy(logits, labels)
