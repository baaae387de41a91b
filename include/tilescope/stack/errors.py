"""The one error type of the stack: its message is what ``up``/``down`` print, on one line."""

from __future__ import annotations


class StackError(RuntimeError):
    """A start-up or shutdown problem a person can act on (busy port, missing binary, ...).

    The CLI prints ``str(error)`` without a traceback and exits non-zero, so the message must
    say what is wrong and, where possible, what to do about it.
    """
