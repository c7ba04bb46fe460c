"""The one exception type for user mistakes.

A `UserError` carries a single line that names the problem and the fix. The command line
prints it (no traceback) and exits non-zero; library callers can catch it like any exception.
It is a ValueError, so a bad argument to the Python API (`width=0`, `num_classes=-1`) raises
what torchvision and TF-Slim raise for one.
"""


class UserError(ValueError):
    """A mistake the user can fix: a missing path, a bad flag value, unreadable data."""
