"""Errors with the documented exit statuses, so every failure maps to one line and one code.

Exit statuses (also in README and ``cohortctl --help``):

====  ==========================================================
0     success
1     unexpected internal error (traceback only with ``--debug``)
2     usage error (bad flags or option values)
65    invalid input data (EX_DATAERR)
66    input missing or unreadable (EX_NOINPUT)
73    cannot create output (EX_CANTCREAT)
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 65
EXIT_NOINPUT = 66
EXIT_CANTCREAT = 73
EXIT_INTERRUPTED = 130

EXIT_TABLE: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "unexpected internal error (traceback only with --debug)",
    EXIT_USAGE: "usage error (bad flags or option values)",
    EXIT_DATA: "invalid input data",
    EXIT_NOINPUT: "input missing or unreadable",
    EXIT_CANTCREAT: "cannot create output",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class CohortError(Exception):
    """Base class: an expected failure with a one-line message and an exit status."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        # One line only: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class UsageError(CohortError):
    """Bad flags or option values."""

    exit_code = EXIT_USAGE


class InputDataError(CohortError):
    """The input exists but its content is invalid."""

    exit_code = EXIT_DATA


class InputMissingError(CohortError):
    """The input is missing or cannot be read."""

    exit_code = EXIT_NOINPUT


class OutputError(CohortError):
    """The output cannot be created."""

    exit_code = EXIT_CANTCREAT
