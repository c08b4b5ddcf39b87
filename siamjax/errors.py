"""The exceptions that entry points turn into one line on stderr and a documented exit code.

Raise `UserError` for anything a user can fix (a path, a config key, a file); let programming errors
raise whatever they raise so that their traceback survives (exit code 1).

Exit codes of train.py, eval.py and siamjax-verify:
  0    done
  1    a bug: a traceback
  2    `UserError`: bad input, config, workdir or storage (one line naming what is wrong)
  3    `NonFiniteError`: a NaN or Inf in the loss or gradients stopped training
  143  `Preempted`: SIGTERM; the current step was checkpointed, rerun the command to continue
"""

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM.


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""

    exit_code = EXIT_USER_ERROR


class NonFiniteError(UserError):
    """Training met a NaN or Inf; nothing non-finite was saved."""

    exit_code = EXIT_NONFINITE


class Preempted(Exception):  # noqa: N818 - not an error: the run stopped on request.
    """SIGTERM stopped training after checkpointing `step`; rerunning the command continues."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted (SIGTERM): saved step {step} in {directory}; rerun the same "
                         "command to continue.")
        self.step = step
