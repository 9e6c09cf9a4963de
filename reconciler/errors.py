"""Error types the CLI knows how to print.

A ``UserError`` is something the user can fix (a bad spec, an unreachable cluster, a stale plan): it is printed as
one clean message and the command exits 1. Anything else is a bug and keeps its traceback. ``TransientError`` marks
a failure worth retrying (the cluster is busy or restarting), ``PermanentError`` one that will fail the same way
again until someone changes something.
"""


class UserError(Exception):
    exit_code = 1


class TransientError(UserError):
    pass


class PermanentError(UserError):
    pass
