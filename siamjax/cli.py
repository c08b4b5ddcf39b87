"""What train.py, eval.py and siamjax-verify share before they call the library.

Hides GPUs from TensorFlow (tf.data runs on the CPU; TF must not take accelerator memory) and turns
a `UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable


def hide_gpus_from_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def user_errors_exit(fn: Callable) -> Callable:
    """Runs `fn`; a UserError becomes 'error: <message>' and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from siamjax.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
