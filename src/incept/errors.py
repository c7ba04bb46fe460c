"""The one exception type for user mistakes.

A `UserError` carries a single line that names the problem and the fix. The command line
prints it (no traceback) and exits non-zero; library callers can catch it like any exception.
"""


class UserError(Exception):
    """A mistake the user can fix: a missing path, a bad flag value, unreadable data."""
