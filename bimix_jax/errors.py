"""The one exception type for problems with what the user gave us.

Library code raises `InputError` with a single line that names the offending field (flag, column, run,
domain, file) and says how to fix it. Binaries catch it, print the line to stderr and exit with code 2
without a traceback (see `experiments/cli.py`). Anything else that escapes is a bug and keeps its
traceback.
"""


class InputError(ValueError):
    """Bad user input: a one-line message naming the field and the fix."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # Always one line.
        super().__init__(message)
