"""The one exception type the library raises for bad input."""


class PrototokensError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
