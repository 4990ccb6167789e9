"""User-facing errors: one clear line on stderr and a nonzero exit, no traceback."""

from __future__ import annotations


class LockprofError(Exception):
    """An error the user can act on. The CLI prints str(self) and exits with exit_code."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class MechanismUnavailable(LockprofError):
    """The kernel lacks a mechanism a probe needs (tracepoint, kprobe, ...)."""

    exit_code = 3
