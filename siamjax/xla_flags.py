"""The XLA:CPU flags siamjax runs with: convolutions and matrix products through XNNPACK.

Why: jaxlib 0.10.2's XLA:CPU hands convolutions to YNNPACK (or, for a convolution alone in its
module, to Eigen). XNNPACK's convolutions are faster than either on SigNet's layers, its weight
gradient faster than `siamjax.conv`'s matmul form, and the whole float32 train step faster by
about half; matrix products through XNNPACK (`individual_dot`) add a little more. The figures:
bench/README.md, "CPU levers" (the XNNPACK rows).

The flags only concern the CPU backend; GPUs and TPUs ignore them. XLA reads XLA_FLAGS once, when
JAX creates its first backend, so `apply()` must run before anything touches a device: the entry
points call it through `siamjax.entry.hide_gpus_from_tensorflow`, and the tests' root conftest.py at
import. A flag the user already put in XLA_FLAGS (same name) is left as the user set it.

Not for: per-model choices (`config.model.conv_impl` picks the convolution's gradient form and
reads `xnnpack_convolutions()` to do so).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

# Name=value pairs appended to XLA_FLAGS. The YNNPACK list keeps its defaults (dots, reductions)
# minus convolutions; XNNPACK takes every convolution and every matrix product on its own.
CPU_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
)
_XNN_FUSION_FLAG = CPU_FLAGS[1].partition("=")[0]  # Whose value says where convolutions go.
# jaxlib versions these flags were measured with. XLA aborts on a flag it does not know, and these
# are experimental ones, so other versions run with XLA's defaults (and `conv_impl='auto'` then
# picks `siamjax.conv`'s weight gradient).
JAXLIB_VERSIONS = ((0, 10, 2), (0, 11, 0))  # [lowest, below)


def _jaxlib_version() -> tuple[int, ...] | None:
    """(major, minor, patch) of the installed jaxlib; None when absent or unreadable."""
    from importlib import metadata

    try:
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", metadata.version("jaxlib"))
    except metadata.PackageNotFoundError:
        return None
    return tuple(int(g) for g in found.groups()) if found else None


def supported(version: tuple[int, ...] | None = None) -> bool:
    """Whether jaxlib (or `version`) is one CPU_FLAGS are known to work with."""
    v = _jaxlib_version() if version is None else version
    return v is not None and JAXLIB_VERSIONS[0] <= v < JAXLIB_VERSIONS[1]


def _name(flag: str) -> str:
    return flag.partition("=")[0]


def apply(environ: MutableMapping[str, str] | None = None) -> None:
    """Appends CPU_FLAGS to environ['XLA_FLAGS'] (default os.environ), except those whose name is
    already there; nothing when jaxlib is not a `supported()` version. Without effect on a JAX
    backend that already exists."""
    if not supported():
        return
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "").split()
    present = {_name(f) for f in flags}
    flags += [f for f in CPU_FLAGS if _name(f) not in present]
    env["XLA_FLAGS"] = " ".join(flags)


def xnnpack_convolutions(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether XLA_FLAGS sends convolutions to XNNPACK (then XLA's own weight gradient is the
    fastest on the CPU; otherwise `siamjax.conv`'s matmul form is)."""
    env = os.environ if environ is None else environ
    for flag in reversed(env.get("XLA_FLAGS", "").split()):  # XLA keeps the last of a repeat.
        if _name(flag) == _XNN_FUSION_FLAG:
            items = flag.partition("=")[2].split(",")
            if all(i.startswith(("+", "-")) for i in items if i):  # Edits of the empty default.
                return "+individual_convolution" in items
            return "individual_convolution" in items
    return False
