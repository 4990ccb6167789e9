"""What the lockprof program does before its heavy imports (pandas, pyarrow):
main.py calls prepare_program() first, when run as the program."""

from __future__ import annotations

import io
import os
import sys

from profiler import allocator

# Subcommands that handle the three signals themselves until their recording
# is written; the others get Python's default handling back at once.
COLLECTING = ("attach", "run", "record")


def subcommand(argv: list[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def prepare_program() -> None:
    """Map large blocks on their own (allocator.py). Load pyarrow with
    malloc as its allocator, except for the collecting subcommands: they
    first check their command line and compile the probes, then load it
    (cli/common.py, _compile_before_pandas)."""
    allocator.map_large_blocks()
    if subcommand(None) not in COLLECTING:
        allocator.arrow_allocates_with_malloc()


# (fd, sys attribute, open flags) of the three standard streams.
_STANDARD_STREAMS = (
    (0, "stdin", os.O_RDONLY),
    (1, "stdout", os.O_WRONLY),
    (2, "stderr", os.O_WRONLY),
)


def ensure_standard_streams() -> None:
    """Started with fd 0, 1 or 2 closed (`lockprof show rec.lpr >&-`):
    /dev/null in its place, and a Python stream on it. Python leaves
    sys.stdout None then, and the next file lockprof opens would get the
    closed number: BCC's compiler warnings (C++, to fd 2) would then land in
    a recording's temporary file. A stream already there is left alone."""
    for fd, name, flags in _STANDARD_STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, flags)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        if getattr(sys, name) is None:
            setattr(sys, name, _text_stream(fd, name))


def _text_stream(fd: int, name: str) -> io.TextIOWrapper:
    """A text stream on fd as Python makes its own (stderr: line-buffered,
    undecodable characters escaped)."""
    raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
    if name == "stderr":
        return io.TextIOWrapper(raw, errors="backslashreplace", line_buffering=True)
    buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered)
