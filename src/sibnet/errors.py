"""Errors that the command line reports as one line (exit code 2) instead of a traceback."""


class SibnetError(Exception):
    """A problem with the user's input (argument, file, row, configuration)."""


class ConfigError(SibnetError, ValueError):
    """A configuration key, value or type is wrong."""


class DataError(SibnetError, ValueError):
    """A dataset file, row or column is missing or malformed."""


def first_line(text: str) -> str:
    """The first nonblank line of an exception's text (at most 200 characters), for one-line messages."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else "unknown error"
