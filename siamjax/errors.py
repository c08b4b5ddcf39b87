"""The one exception type that entry points turn into a one-line message and exit code 2, and the
one way any error becomes such a line.

Raise `UserError` for anything a user can fix (a path, a config key, a file); let programming errors
raise whatever they raise so that their traceback survives.
"""

from __future__ import annotations

from typing import Literal


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


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
