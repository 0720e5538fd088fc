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

from collections.abc import Callable

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


# -- Ctrl-C that a library swallowed ----------------------------------------------------
# Python raises KeyboardInterrupt wherever the main thread happens to be. When that is a
# finaliser (numba/llvmlite ``__del__``) the exception is printed as "ignored" and lost,
# and the command would go on to publish its output and exit 0. The CLI's handler
# therefore also records the interrupt; every publish step calls ``raise_if_interrupted``
# before making its output visible.
_INTERRUPTED = {"flag": False}


def install_interrupt_handler() -> Callable[[], None]:
    """Record SIGINT as well as raising KeyboardInterrupt (main thread only).

    Returns a function that puts the previous handler back (for in-process callers).
    """
    import signal
    import sys
    import threading

    _INTERRUPTED["flag"] = False
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _on_sigint(_signum: int, _frame: object) -> None:
        _INTERRUPTED["flag"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, _on_sigint)
    previous_hook = sys.unraisablehook

    def _quiet_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
        # The interrupt is recorded above; Python's "Exception ignored in ..." traceback
        # would only break the one-line error contract.
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = _quiet_interrupt

    def restore() -> None:
        sys.unraisablehook = previous_hook
        if previous is not None:  # None: installed outside Python, nothing to put back
            signal.signal(signal.SIGINT, previous)

    return restore


def interrupted() -> bool:
    """True once SIGINT arrived in this command, even if its exception was swallowed."""
    return _INTERRUPTED["flag"]


def raise_if_interrupted() -> None:
    """Refuse to publish output after an interrupt that some library swallowed."""
    if _INTERRUPTED["flag"]:
        raise KeyboardInterrupt
