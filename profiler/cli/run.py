"""lockprof run: start a command and profile it until it exits."""

from __future__ import annotations

import click

from profiler import outputs
from profiler.cli.common import (
    collect_command,
    collection_options,
    follow_option,
    refuse_unknown_option,
)
from profiler.targets import CommandTarget, check_command


@click.command(
    "run",
    # Options end at CMD: `run ./ebizzy -t 1` passes -t 1 to ebizzy, as time
    # and strace do, not to lockprof.
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@collection_options("run")
@follow_option
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True, metavar="CMD...")
def command(argv, **options) -> None:
    """Start CMD, profile it until it exits, and record its exit status and
    rusage (user, sys, elapsed, minor faults) as /usr/bin/time would. Exits
    with CMD's status (128 + N when signal N killed it), as time does; after
    a signal N to lockprof that CMD outlived, 128 + N.

    The command is held before exec until the probes are attached. Only its
    own process is profiled, unless -f/--follow: then every process it forks
    too (a build, a shell script), each mmap_lock a row of its own.

    With -d SECONDS, collection stops after SECONDS whether or not CMD has
    exited, and lockprof does not wait for it: a CMD still running is left
    running (as attach leaves its target), its exit status is unknown
    (null) and its rusage covers the collection window only, as the lock
    figures do.

    With --json, stdout holds the JSON summary alone: CMD's stdout goes to
    lockprof's stderr (as /usr/bin/time keeps its report apart). So it does
    when the recording or the report goes to stdout (-o -, --html -).

    \b
    Examples:
      lockprof run -- ./ebizzy -m -P
      lockprof run -f -- make -j8
      lockprof run -o before.lpr -- workloads/bin/lpbizzy -t 4 -S 10
    """
    refuse_unknown_option(argv)
    check_command(argv[0])  # before the probes are compiled and attached
    # stdout kept for lockprof's own bytes: the JSON, the recording or the report.
    keep_stdout = options["as_json"] or any(
        outputs.is_our_stdout(options.get(name)) for name in ("output", "html")
    )
    collect_command(
        lambda: CommandTarget(list(argv), stdout_fd=2 if keep_stdout else None), **options
    )
