"""User-facing errors.

Anything a user can cause (a bad flag, a missing file, a checkpoint that does not
fit) raises :class:`ProbeError` with a one-line message that says what is wrong
and what to do.  The CLI prints it and exits with code 2; every other exception
is a bug and keeps its traceback.
"""
from collections.abc import Iterable


class ProbeError(Exception):
    """A problem with the user's input, reported as one line (CLI exit code 2)."""


def close_matches(word: object, choices: Iterable[object], n: int = 3) -> list[str]:
    import difflib

    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)


def suggest(word: object, choices: Iterable[object]) -> str:
    """' (did you mean X?)' or '' — appended to unknown-name errors."""
    found = close_matches(word, choices)
    return f" (did you mean {', '.join(found)}?)" if found else ""
