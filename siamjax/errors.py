"""The one exception type that entry points turn into a one-line message and exit code 2.

Raise `UserError` for anything a user can fix (a path, a config key, a file); let programming errors
raise whatever they raise so that their traceback survives.
"""


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""
