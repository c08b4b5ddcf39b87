"""The exceptions that entry points turn into one line on stderr and a documented exit code, and
the one way any error becomes such a line.

Raise `UserError` for anything a user can fix (a path, a config key, a file); let programming errors
raise whatever they raise so that their traceback survives (exit code 1).

Exit codes of train.py, eval.py and siamjax-verify:
  0    done
  1    a bug: a traceback
  2    `UserError`: bad input, config, workdir or storage (one line naming what is wrong)
  3    `NonFiniteError`: a NaN or Inf in the loss or gradients stopped training
  143  `Preempted`: SIGTERM; the current step was checkpointed, rerun the command to continue
"""

from __future__ import annotations

from typing import Literal

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
        super().__init__(
            f"preempted (SIGTERM): saved step {step} in {directory}; rerun the same "
            "command to continue."
        )
        self.step = step


def one_line(
    error: BaseException | str,
    *,
    lines: Literal["all", "first", "last"] = "all",
    with_type: bool = False,
) -> str:
    """`error`'s message on one line, for a `UserError` or a terminal that names what went wrong.

    Libraries' messages span lines (orbax, ml_collections) or quote a bare key (a KeyError's str is
    the repr of its key). `lines` keeps all of them joined by single spaces, or only the first (the
    summary most libraries put there) or the last (where a chained traceback puts the cause).
    `with_type` prefixes the exception's class name (`OSError: ...`), for errors whose message alone
    does not say what failed. An empty message becomes the class name.
    """
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    else:
        text = str(error)
    parts = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines == "first":
        parts = parts[:1]
    elif lines == "last":
        parts = parts[-1:]
    text = " ".join(" ".join(parts).split())
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    if not text:
        return name
    return f"{name}: {text}" if with_type and name else text
