"""Errors shown to users as one line, and the argparse helpers that keep option errors so."""

from __future__ import annotations

import argparse

# The exit status of every refused input or option (argparse's own, too); 1 is left for bugs.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem the user can fix (bad file, bad option); printed as one line, no traceback."""


def one_line(text: str) -> str:
    """``text`` on one line (a message built from another library's text may hold newlines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` report a bad option as one line (no usage block), exit status 2."""

    def error(message: str):
        parser.exit(USER_ERROR_EXIT, f"error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value
