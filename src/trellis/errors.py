"""The one error type the CLI turns into a one-line message instead of a traceback."""


class TrellisError(Exception):
    """A user-facing failure: bad config, missing file, corrupt checkpoint, bad data line.

    The message must name the thing at fault (a file, a key, a line number).
    """
