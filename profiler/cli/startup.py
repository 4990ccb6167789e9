"""What the lockprof program does before its heavy imports (pandas, pyarrow):
main.py calls prepare_program() first, when run as the program."""

from __future__ import annotations

import sys
from pathlib import Path

from profiler import allocator
from profiler.errors import LockprofError

# Subcommands that handle the three signals themselves until their recording
# is written; the others get Python's default handling back at once.
COLLECTING = ("attach", "run", "record")


def subcommand(argv: list[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def _pid_given(args: list[str]) -> str | None:
    """The value of -p/--pid, as written (-p N, -pN, --pid N, --pid=N)."""
    for i, arg in enumerate(args):
        if arg in ("-p", "--pid"):
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith("--pid="):
            return arg.split("=", 1)[1]
        if arg.startswith("-p") and not arg.startswith("--"):
            return arg[2:]
    return None


def about_to_collect(argv: list[str]) -> bool:
    """A collecting subcommand, not asked for help, with the privileges to
    compile: worth compiling the probes before anything else. Compiling
    takes ~1.3 s: a missing pid (the likeliest mistake) is left to the
    usual check, which then answers at once."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    if subcommand(own) not in COLLECTING or {"-h", "--help", "--version"} & set(own):
        return False
    pid = _pid_given(own)
    if pid is not None and not (pid.isdigit() and Path(f"/proc/{pid}").is_dir()):
        return False
    from profiler import privileges

    try:
        privileges.require()
    except LockprofError:
        return False  # the session says which capability is missing
    return True


def prepare_program() -> None:
    """About to collect, compile the probes before pandas and pyarrow load:
    the start-up peak is then ~180 MB, not ~270 (bpf.compile_early). Then
    load pyarrow with malloc as its allocator (allocator.py)."""
    if about_to_collect(sys.argv[1:]):
        from profiler import bpf

        bpf.compile_early()
    allocator.arrow_allocates_with_malloc()
