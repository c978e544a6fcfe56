"""Errors raised by the core. The CLI maps each to ``Error: <message>`` and its exit code.

Exit codes for the whole tool (the CLI uses these names, never the numbers):
    0    success
    1    a check failed, or states differ
    2    usage error or bad input
    3    internal error (a bug)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def clean_message(text: object) -> str:
    """One line of plain text from a third-party message: no ANSI codes, no newlines."""
    s = _ANSI.sub("", str(text))
    return " ".join(s.split())


class LstmscopeError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointError(LstmscopeError):
    """A checkpoint cannot be read, holds no usable LSTM, or is inconsistent."""


class InputError(LstmscopeError):
    """An input sequence or lengths file is unusable."""


class StateError(LstmscopeError):
    """A state snapshot cannot be read or does not fit the model."""


class UsageError(LstmscopeError):
    """Options that do not make sense together."""


class OutputError(LstmscopeError):
    """An output file cannot be written."""
