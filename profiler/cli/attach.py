"""lockprof attach: profile a running process."""

from __future__ import annotations

import re

import click

from profiler.cli.common import collect_command, collection_options, follow_option
from profiler.targets import PidTarget, is_kernel_thread


class _Pid(click.IntRange):
    """One process id (perf takes a list: say why not, rather than that
    '1,2' is no integer)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "," in value:
            self.fail(
                f"{value!r}: one process id (-f also profiles the processes it forks; "
                "`record -a` profiles every process)",
                param,
                ctx,
            )
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value):
            self.fail(f"{value!r} is not a process id", param, ctx)
        return super().convert(value, param, ctx)


@click.command("attach")
@click.option("-p", "--pid", type=_Pid(min=1), required=True, help="Process to profile (one pid).")
@collection_options("attach")
@follow_option
def command(pid, **options) -> None:
    """Profile a running process until Ctrl-C, -d SECONDS or its exit.

    Counts the process's own lock activity and every task that takes its
    mmap_lock (khugepaged, /proc/PID/maps readers, ptrace), labelled by comm.

    \b
    Examples:
      lockprof attach -p 1234                 live view until Ctrl-C
      lockprof attach -p 1234 -d 30 -o a.lpr  30 seconds into a.lpr
      lockprof attach -p 1234 -t 1ms --json   record waits >= 1 ms, JSON summary
      lockprof attach -p 1234 -f              also its children, now and later
    """
    collect_command(lambda: _with_notes(PidTarget(pid)), **options)


def _with_notes(target: PidTarget) -> PidTarget:
    """A thread's id stands for its process (they share one mm), which is
    said; a kernel thread has no mm: the table would come out empty of
    mmap_lock rows without a word why."""
    if target.given_tid is not None:
        click.echo(
            f"lockprof: {target.given_tid} is a thread of pid {target.tgid}: "
            "profiling the whole process",
            err=True,
        )
    if is_kernel_thread(target.tgid):
        click.echo(
            f"lockprof: {target.describe()} is a kernel thread: it has no mmap_lock; "
            "only its contended waits on other locks are recorded",
            err=True,
        )
    return target
