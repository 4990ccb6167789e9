"""lockprof command line: one module per subcommand, wired here.

Every user-facing failure is one line on stderr and a nonzero exit code.
Set LOCKPROF_DEBUG=1 to see a traceback for an internal error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from profiler import signals
from profiler.cli import startup

# Run as the lockprof program (not imported by tests): standard streams that
# were closed become /dev/null; catch SIGINT, SIGTERM and SIGHUP before the
# 0.4 s of imports below, so that a signal at any moment of start-up ends
# lockprof with one line (profiler.signals); then what must come before
# pandas and pyarrow load (startup.py).
if __name__ == "__main__" or Path(sys.argv[0]).name == "lockprof":
    startup.ensure_standard_streams()
    signals.install_early()
    startup.prepare_program()


import importlib

import click

from profiler import __version__, render
from profiler.cli.startup import COLLECTING, subcommand
from profiler.errors import LockprofError

# Subcommands (modules profiler.cli.NAME), in the order `--help` lists them.
# A module is imported when its subcommand runs: `attach`, `run` and
# `record` must not load pandas before their probes are compiled.
SUBCOMMANDS = (
    "attach",
    "run",
    "record",
    "show",
    "report",
    "export",
    "doctor",
    "precompile",
    "bench",
    "compare",
)


class StdoutGone(Exception):
    """stdout's reader went away (`| head`): not an OSError, which click
    would turn into exit 1 on its own, past main()'s 141."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used (or listed)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if _stdout_is_gone():
                raise StdoutGone() from exc
            # stderr's reader went: its line goes nowhere, stdout keeps its output.
            from profiler.cli.common import silence_stream

            silence_stream(sys.stderr)
            raise LockprofError("stderr's reader went away") from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        return importlib.import_module(f"profiler.cli.{cmd_name}").command


def _stdout_is_gone() -> bool:
    """Was a broken pipe stdout's? A pipe or socket whose reader went away
    polls as an error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _stdout_is_full(exc: OSError) -> bool:
    """Is exc, an OSError that reached the top, stdout's having no room:
    /dev/full, or a file on a file system with no space (or quota) left?
    Every other file lockprof writes handles its own errors."""
    import errno
    import stat

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return False
    try:
        target = os.fstat(sys.stdout.fileno())
        if stat.S_ISCHR(target.st_mode):
            return target.st_rdev == os.makedev(1, 7)  # /dev/full
        if not stat.S_ISREG(target.st_mode):
            return False
        space = os.fstatvfs(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return exc.errno != errno.ENOSPC or min(space.f_bavail, space.f_bfree) == 0


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockprof")
def cli() -> None:
    """Live lock contention profiler for Linux (eBPF).

    Measures how often mmap_lock, rwsems and other kernel locks are taken for
    read and for write, how long readers and writers wait and hold them, and
    on which CPUs.

    \b
    Examples:
      lockprof attach -p 1234 -d 30         profile a running process for 30 s
      lockprof run -- ./ebizzy -m           start a command, profile until it exits
      lockprof record -a -d 10 --html r.html  the whole system for 10 s, and a report
      lockprof show rec.lpr                 summarise a recording (--json for scripts)
      lockprof report rec.lpr -o r.html     self-contained HTML dashboard (offline)
      lockprof export rec.lpr --folded f    folded stacks for FlameGraph (--csv DIR)
      lockprof doctor                       which kernel mechanisms work here
      lockprof bench --runs 3 -o before.lpset -- CMD   repeated runs for a comparison
      lockprof compare before.lpset after.lpset -o c.html   did the patch help?
    """


# click >= 8.2 raises this UsageError for `lockprof` with no arguments: its
# message is the whole help, shown as click shows it (click 8.1 printed the
# help itself and exited 0).
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def usage_line(exc: click.UsageError) -> str:
    """A command-line error as one line, not click's four (Usage, Try,
    blank, Error): `lockprof run: -d/--duration: 0.0 is not in the range
    0.1<=x<=604800.0 (see lockprof run --help)`."""
    command = exc.ctx.command_path if exc.ctx is not None else "lockprof"
    message = exc.format_message()
    # click's "Invalid value for '-d' / '--duration': ..." (a missing one
    # keeps its own "Missing option '-a' / '--all-cpus'").
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        message = f"{_param_name(exc.param)}: {exc.message}" if exc.param else message
    return f"{command}: {message.rstrip('.')} (see {command} --help)"


def _param_name(param: click.Parameter) -> str:
    """-d/--duration for an option, PATH for an argument."""
    if isinstance(param, click.Option):
        return "/".join(param.opts)
    return param.human_readable_name


def main(argv: list[str] | None = None) -> int:
    return flush_outputs(_run(argv))


def flush_outputs(code: int) -> int:
    """Flush stdout and stderr now, while a reader that went away can still
    be answered: left to Python's flush at exit, a closed pipe or a hung-up
    terminal turns lockprof's status into 120 (seen in a fresh chroot, where
    attach's stdout and stderr readers closed mid-run). stdout gone: 141, as
    for any closed pipe, unless lockprof already failed; stderr gone: the
    status stands (the recording is written either way)."""
    from profiler.cli.common import silence_stream

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as exc:  # EPIPE, EIO; ValueError: closed
            silence_stream(stream)
            if stream is sys.stdout and code == 0 and isinstance(exc, BrokenPipeError):
                code = 141
    return code


def _run(argv: list[str] | None) -> int:
    try:
        if subcommand(argv) not in COLLECTING:
            signals.release_early()
        cli.main(args=argv, prog_name="lockprof", standalone_mode=False)
    except LockprofError as exc:
        # Errors quote paths, names and command lines: never raw escapes.
        click.echo(f"lockprof: {render.safe_text(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("lockprof: aborted", err=True)
        return 130
    except _NO_ARGS_IS_HELP as exc:
        exc.show()  # the help, line by line (on stderr, status 2)
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(render.safe_text(usage_line(exc)), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(render.safe_text(f"lockprof: {exc.format_message()}"), err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (BrokenPipeError, StdoutGone):  # the reader of stdout stopped reading (`| head`)
        from profiler.cli.common import silence_stream

        silence_stream(sys.stdout)
        return 141
    except Exception as exc:
        if isinstance(exc, OSError) and _stdout_is_full(exc):
            # `show > /dev/full`, a full disk under `> file`: not a bug of ours.
            from profiler.cli.common import silence_stream

            silence_stream(sys.stdout)
            reason = exc.strerror or str(exc)
            click.echo(f"lockprof: cannot write to stdout: {reason}", err=True)
            return 1
        if os.environ.get("LOCKPROF_DEBUG"):
            raise
        click.echo(
            render.safe_text(
                f"lockprof: internal error: {type(exc).__name__}: {exc} "
                "(LOCKPROF_DEBUG=1 shows a traceback)"
            ),
            err=True,
        )
        return 70
    finally:
        signals.release_early(quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
