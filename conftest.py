"""Repository-wide pytest setup: 8 simulated CPU devices, siamjax's XLA:CPU flags, `configs`
importable.

XLA reads its flags once, at JAX's first use, so they must be set before any test touches a device.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from siamjax import xla_flags  # noqa: E402

xla_flags.apply()  # The XLA:CPU flags users' processes run with (siamjax.cli applies them too).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
