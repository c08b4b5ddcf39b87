"""siamjax.xla_flags: the flags it sets, and SigNet computing the same with them as without."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from siamjax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_supported_jaxlib = pytest.mark.skipif(
    not xla_flags.supported(), reason="jaxlib is not a version siamjax.xla_flags applies to"
)


@needs_supported_jaxlib
def test_apply_appends_its_flags_and_keeps_what_the_user_set():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.apply(env)
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        *xla_flags.CPU_FLAGS,
    ]
    xla_flags.apply(env)  # Idempotent.
    assert len(env["XLA_FLAGS"].split()) == 1 + len(xla_flags.CPU_FLAGS)

    mine = "--xla_cpu_experimental_xnn_fusion_type=dot"
    env = {"XLA_FLAGS": mine}
    xla_flags.apply(env)
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == mine and not any("individual_convolution,individual_dot" in f for f in flags)
    assert not xla_flags.xnnpack_convolutions(env)  # So conv_impl='auto' keeps siamjax.conv.


def test_apply_does_nothing_for_a_jaxlib_it_was_not_measured_with(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 9, 0))
    env = {}
    xla_flags.apply(env)
    assert env == {}
    assert xla_flags.supported((0, 10, 2)) and not xla_flags.supported((0, 11, 0))


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", False),
        ("--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot", True),
        ("--xla_cpu_experimental_xnn_fusion_type=+individual_convolution", True),
        ("--xla_cpu_experimental_xnn_fusion_type=-individual_convolution", False),
        ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise", False),
        # XLA keeps the last of a repeated flag.
        (
            "--xla_cpu_experimental_xnn_fusion_type=individual_convolution "
            "--xla_cpu_experimental_xnn_fusion_type=dot",
            False,
        ),
    ],
)
def test_xnnpack_convolutions_reads_xla_flags(flags, expected):
    assert xla_flags.xnnpack_convolutions({"XLA_FLAGS": flags}) is expected


def test_conv_impl_auto_follows_the_flags(monkeypatch):
    from jax import lax

    from siamjax import conv

    monkeypatch.setenv("XLA_FLAGS", " ".join(xla_flags.CPU_FLAGS))
    assert conv.for_backend("auto", "cpu") is lax.conv_general_dilated
    monkeypatch.setenv("XLA_FLAGS", "")
    assert conv.for_backend("auto", "cpu") is conv.conv_general_dilated
    assert conv.for_backend("auto", "gpu") is lax.conv_general_dilated


# Run as a script: SigNet's BCE loss and gradients on fixed inputs, under whatever XLA_FLAGS the
# process has, saved to argv[1] (.npz; the loss as `loss`, each gradient leaf by its path).
def _signet_loss_and_grads(out: str) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    sys.path.insert(0, ROOT)
    from configs import sigcomp
    from siamjax import models

    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.integers(0, 256, (4, 150, 220, 1)), jnp.uint8)
    b = jnp.asarray(rng.integers(0, 256, (4, 150, 220, 1)), jnp.uint8)
    label = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    cfg = sigcomp.get_config().model
    cfg.conv_impl = "xla"  # The convolution as XLA compiles it: the flags decide its kernels.
    model = models.create_model(cfg)
    variables = model.init({"params": jax.random.key(0)}, a, b, train=False)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            a,
            b,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label))

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    leaves = {
        jax.tree_util.keystr(p): np.asarray(g)
        for p, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    np.savez(out, loss=np.asarray(value), **leaves)


@needs_supported_jaxlib
def test_signet_with_xnnpack_equals_xla_default(tmp_path):
    """Loss and every gradient of SigNet at 150x220 under siamjax's flags equal XLA's defaults'
    (1e-5 relative to each leaf's scale), each computed in a process of its own."""
    results = {}
    for name, flags in (("default", ""), ("siamjax", " ".join(xla_flags.CPU_FLAGS))):
        out = str(tmp_path / f"{name}.npz")
        env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
        subprocess.run([sys.executable, __file__, out], env=env, check=True, timeout=600)
        results[name] = dict(np.load(out))
    ref, new = results["default"], results["siamjax"]
    assert ref.keys() == new.keys()
    assert abs(float(new["loss"] - ref["loss"])) <= 1e-5 * abs(float(ref["loss"]))
    grads = [k for k in ref if k != "loss"]
    scale = max(float(np.max(np.abs(ref[k]))) for k in grads)
    for k in grads:
        err = float(np.max(np.abs(new[k] - ref[k])))
        # Conv biases in front of BatchNorm have an exactly-zero true gradient: their float noise
        # is judged against the overall gradient scale.
        assert err <= 1e-5 * float(np.max(np.abs(ref[k]))) + 1e-6 * scale, k


if __name__ == "__main__":
    _signet_loss_and_grads(sys.argv[1])
