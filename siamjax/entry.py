"""What every entry point (train.py, eval.py, siamjax-verify, -export, -serve) shares before it
calls the library: the one `main` of train.py and eval.py, process setup, flag parsing, a quiet
terminal and errors as exit codes.

Hides GPUs from TensorFlow (tf.data runs on the CPU; TF must not take accelerator memory) and turns
a `UserError` into one line on stderr and its exit code (2; 3 for a non-finite loss), and a
`Preempted` into one line and exit code 143 (see siamjax/errors.py).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable

from siamjax import host_memory, xla_flags
from siamjax.errors import one_line


def prepare_process() -> None:
    """The process-wide settings every entry point starts with: `siamjax.host_memory` (XLA's
    buffers reused between steps) and `siamjax.xla_flags` (XLA:CPU's fast convolutions). Call it
    before any thread, TensorFlow or JAX starts."""
    host_memory.apply()
    xla_flags.apply()


def hide_gpus_from_tensorflow() -> None:
    """Also `prepare_process()`: call it before TensorFlow and JAX start."""
    prepare_process()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    quiet_library_logs()


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO (and debug) records logged from inside orbax and TFDS: a save alone logs dozens
    of lines that bury the training progress. Their warnings and errors still pass."""

    _QUIET = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not any(q in record.pathname for q in self._QUIET)


def quiet_library_logs() -> None:
    """Installs the filter on absl's handler (the one every library's absl logging goes to)."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def quiet_terminal(verbose: bool) -> None:
    """Keeps XLA, JAX and orbax messages off the terminal, so that stdout carries only results
    (siamjax-verify, siamjax-export, siamjax-serve); `verbose` keeps JAX's and absl's."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose else "3")
    quiet_library_logs()  # orbax's INFO chatter, even with --verbose.
    if verbose:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("jax", "orbax", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_console(main: Callable[[], int]) -> None:
    """What a console script (siamjax-verify, -export, -serve) does around its `main`: library
    deprecation notes off unless --verbose, the process set up before threads and JAX start, and
    main's return value as the exit code."""
    if "--verbose" not in sys.argv:
        warnings.filterwarnings("ignore")  # Library deprecation notes are not for this user.
    prepare_process()
    sys.exit(main())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file errors as one line and exit code 2.

    ml_collections reports a missing config file only when the config is first read, and an
    unknown `--config.key` as a KeyError with a traceback; both become `error: ...` here.
    """
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{_first_line(e)} {_last_line(e)}" if "\n" in str(e).strip() else str(e))
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        _fail(
            f"{' '.join(bad) or '--config'}: unknown key or bad value ({_first_line(e)}); "
            "see configs/default.py for every key."
        )
    config_arg = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
    try:
        flags.FLAGS.config.keys()  # A config that failed to load raises its error here.
    except Exception as e:  # noqa: BLE001 - any load failure is the user's file.
        _fail(f"cannot load {config_arg}: {_last_line(e)}")
    return rest


def _first_line(e: BaseException) -> str:
    return one_line(e, lines="first").strip("\"'") or type(e).__name__


def _last_line(e: BaseException) -> str:
    return one_line(e, lines="last")


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def user_errors_exit(fn: Callable) -> Callable:
    """Runs `fn`; a UserError becomes 'error: <message>' and its exit code (2, or 3 for a
    non-finite loss); a Preempted becomes '<message>' and exit code 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from siamjax.errors import Preempted, UserError

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _fail(str(e), e.exit_code)
        except Preempted as e:
            print(str(e), file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper


def main(library_call: Callable[[], object]) -> None:
    """The main of train.py and eval.py: absl's flags (parsed by `parse_flags`), no positional
    arguments, the process prepared (`hide_gpus_from_tensorflow`) before `library_call()` runs,
    and a UserError or Preempted from it as one line and its exit code (`user_errors_exit`)."""
    from absl import app

    @user_errors_exit
    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        hide_gpus_from_tensorflow()
        library_call()

    app.run(run, flags_parser=parse_flags)
