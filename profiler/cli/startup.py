"""What the lockprof program does before its heavy imports (pandas, pyarrow):
main.py calls prepare_program() first, when run as the program."""

from __future__ import annotations

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
