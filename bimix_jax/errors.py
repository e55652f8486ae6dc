"""The one exception type for problems with what the user gave us.

Library code raises `InputError` with a single line that names the offending field (flag, column, run,
domain, file) and says how to fix it. Binaries catch it, print the line to stderr and exit with code 2
without a traceback (see `experiments/cli.py`). Anything else that escapes is a bug and keeps its
traceback.
"""

import re

# numpy 2 scalars print as np.str_('github') / np.float64(0.5) inside {x!r}; users should read 'github' / 0.5.
_NUMPY_REPR = re.compile(r"np\.(?:str_|float64|float32|int64|int32|bool_?)\(((?:'[^']*'|\"[^\"]*\"|[^()'\"]*))\)")


class InputError(ValueError):
    """Bad user input: a one-line message naming the field and the fix."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # Always one line.
        message = _NUMPY_REPR.sub(r"\1", message)
        super().__init__(message)
