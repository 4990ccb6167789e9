"""lockprof record: profile the whole system."""

from __future__ import annotations

import click

from profiler.cli.common import collect_command, collection_options
from profiler.errors import LockprofError
from profiler.targets import Target


@click.command("record")
@click.option(
    "-a",
    "--all-cpus",
    "system_wide",
    is_flag=True,
    required=True,
    help="Whole system (all processes, all CPUs).",
)
@collection_options("record")
@click.argument("cmd", nargs=-1, metavar="")
def command(system_wide, cmd, **options) -> None:
    """Profile the whole system until Ctrl-C or -d SECONDS.

    \b
    Examples:
      lockprof record -a -d 10
      lockprof record -a -i 5 -o system.lpr
    """
    if cmd:
        # perf's idiom, `perf record -a -- sleep 10`: say what does that here.
        raise LockprofError(
            f"record -a runs no command ({' '.join(cmd)}): -d SECONDS for a time, "
            "`lockprof run -f -- CMD` for a command and what it forks",
            exit_code=2,
        )
    if not system_wide:
        raise LockprofError(
            "record needs -a (whole system); for one process use attach -p", exit_code=2
        )
    collect_command(Target, **options)
