"""Options and the collect-save-summarise flow shared by attach, run and record."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from profiler import allocator, outputs, privileges, render, schema, signals
from profiler.errors import LockprofError
from profiler.options import MAX_CPUS, CollectOptions, CpuFigures, LiveState
from profiler.signals import StopFlag
from profiler.targets import CommandTarget, Target, exit_text, recorded_exit

if TYPE_CHECKING:
    from profiler.recording import Recording

# Nothing here imports pandas or pyarrow at load: a collection compiles its
# probes first (see _start_and_collect), and the modules that need them
# (recording, summary, report, session) are imported after.

# Rows of the summary printed when a collection ends (--json: all of them).
# A system-wide run of two hours had 99,464 lock rows: printing every one
# took 50 s and ~550 MB more than printing 40 (docs/reliability.md);
# `lockprof show FILE` lists all.
FINAL_SUMMARY_TOP = 50

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s)?\s*$")
_NS_PER = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


class TimeParam(click.ParamType):
    """A duration like 100us, 2ms, 1.5s or a bare number in the given unit,
    at most max_s seconds (default one hour: the histograms' last bucket
    starts at 2^38 ns, about 4.6 minutes)."""

    name = "time"

    def __init__(self, default_unit: str, max_s: float = 3600, positive: bool = False):
        self.default_unit = default_unit
        self.max_ns = int(max_s * 1e9)
        self.positive = positive  # 0 refused (a --threshold of 0 would keep every event)

    def convert(self, value, param, ctx):
        if isinstance(value, int | float):
            ns = value * _NS_PER[self.default_unit]
        else:
            match = _DURATION.match(str(value))
            if not match:
                self.fail(f"{value!r} is not a duration (examples: 500us, 2ms, 1s)", param, ctx)
            number, unit = float(match.group(1)), match.group(2) or self.default_unit
            ns = number * _NS_PER[unit]
        if not math.isfinite(ns) or ns > self.max_ns:
            self.fail(f"{value!r} is longer than {self.max_ns // 1_000_000_000} s", param, ctx)
        if self.positive and int(ns) <= 0:
            self.fail(f"must be longer than 0, not {value!r} (examples: 1ns, 500us)", param, ctx)
        return int(ns)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange without nan (which passes every range check)."""

    name = "number"  # `-d abc`: "'abc' is not a valid number", not "... float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# Kernel stacks of contended waits: every collecting command and `bench`.
STACK_OPTIONS = [
    click.option(
        "--stack-threshold",
        type=TimeParam("us"),
        default="10us",
        show_default=True,
        help="Take the kernel stack of contended waits at least this long "
        "(stacks cost microseconds each; shorter waits are counted without one, "
        "but a lock's first wait in each mode on each CPU takes one to name the lock).",
    ),
    click.option(
        "--stack-rate",
        type=click.IntRange(min=0, max=1_000_000),
        default=200,
        show_default=True,
        help="At most N such stacks per CPU per second; the other long waits are "
        "counted without one. Naming stacks have a budget of N of their own. "
        "0: a stack for every wait over --stack-threshold.",
    ),
]


def stack_options(func):
    for option in reversed(STACK_OPTIONS):
        func = option(func)
    return func


# What the probes trace and how: every collecting command, and `doctor
# --overhead`, which measures what they would cost (probe_settings).
THRESHOLD_OPTION = click.option(
    "-t",
    "--threshold",
    type=TimeParam("us", positive=True),
    default="100us",
    show_default=True,
    help="Keep every wait or hold at least this long in the recording's event "
    "stream, for timelines (a bare number is in us); aggregates count everything.",
)
NO_MMAP_LOCK_OPTION = click.option(
    "--no-mmap-lock",
    is_flag=True,
    help="Leave out the mmap_lock tracepoints (contention only).",
)
NO_CONTENTION_OPTION = click.option(
    "--no-contention", is_flag=True, help="Leave out lock:contention_* (mmap_lock only)."
)
FAMILY_OPTIONS = [
    NO_MMAP_LOCK_OPTION,
    NO_CONTENTION_OPTION,
    click.option(
        "--lock-types",
        metavar="TYPES",
        help="Contention of these lock types only, comma-separated (as perf lock "
        f"contention -Y): {', '.join(schema.LOCK_TYPES)}. The others' waits are "
        "not timed (cheaper where they are frequent). Default: every type.",
    ),
]


def one_lock_spec(_ctx, _param, specs: tuple[str, ...]) -> str | None:
    """--locks once: a second one replaced the first without a word (its
    locks then went unprobed)."""
    if len(specs) > 1:
        raise click.BadParameter(f"one lock spec a run, not {len(specs)}: {', '.join(specs)}")
    return specs[0] if specs else None


def locks_option(help_text: str):
    """--locks SPEC, once (one_lock_spec): the collecting commands' and bench's."""
    return click.option(
        "--locks",
        "lock_spec",
        metavar="SPEC",
        multiple=True,
        callback=one_lock_spec,
        help=help_text,
    )


LOCKS_OPTION = locks_option(
    "Also probe a lock's own functions: a built-in spec (rw_mutex, rwsem, "
    "percpu_counter_sum, "
    "pthread_rwlock), NAME@BINARY to point it at a binary or library, or a "
    "TOML spec file (see README). Uses uprobes, or kprobes for the kernel.",
)
OPT_IN_OPTIONS = [
    click.option(
        "--offcpu",
        is_flag=True,
        help="Also record off-CPU time by kernel stack (sched_switch): the "
        "writer's price of percpu rw-semaphores (grace period, reader drain). "
        "Takes a stack per block of every traced task.",
    ),
    click.option(
        "--sample",
        is_flag=True,
        help="Also sample kernel stacks on every CPU (perf cpu-clock): the CPU "
        "time of __percpu_counter_sum where no kprobe can time it.",
    ),
    click.option(
        "--sample-hz",
        type=click.IntRange(min=1, max=10_000),
        default=99,
        show_default=True,
        help="Sampling frequency per CPU for --sample (needs --sample).",
    ),
]


def probe_options(func):
    """The options choosing what the probes trace (doctor --overhead)."""
    for option in reversed([THRESHOLD_OPTION, *STACK_OPTIONS, *FAMILY_OPTIONS, *OPT_IN_OPTIONS]):
        func = option(func)
    return func


# What -d stops short of, and the default recording name, per collecting
# subcommand: record has no target to exit or to leave running.
_DURATION_HELP = {
    "attach": "Stop collecting after SECONDS (default: at Ctrl-C, or when the process "
    "exits). The process is left running.",
    "run": "Stop collecting after SECONDS (default: at Ctrl-C, or when CMD exits). "
    "A CMD still running then is left running.",
    "record": "Stop collecting after SECONDS (default: at Ctrl-C).",
}
_OUTPUT_NAME = {
    "attach": "lockprof-attach-PID-TIME.lpr",
    "run": "lockprof-run-PID-TIME.lpr",
    "record": "lockprof-system-all-TIME.lpr",
}
_JSON_HELP = {
    "attach": "",
    "run": " (CMD's stdout goes to stderr)",
    "record": "",
}


COMBINE_OPTION = click.option(
    "-c",
    "--combine-locks",
    "combine",
    is_flag=True,
    help="One row per lock name rather than per lock: the locks named after the same "
    "contending caller (a page-table lock per page), and the mmap_locks of processes of "
    "the same name, as perf lock contention shows callers (with --json, each row's "
    "locks_combined counts them).",
)


def collection_options(command: str):
    """The bcc-style flags every collecting subcommand (attach, run, record) takes."""
    return lambda func: _add_collection_options(func, command)


def _add_collection_options(func, command: str):
    options = [
        click.option(
            "-d",
            "--duration",
            type=FiniteFloatRange(min=0.1, max=7 * 86400),
            metavar="SECONDS",
            help=_DURATION_HELP[command],
        ),
        click.option(
            "-i",
            "--interval",
            type=FiniteFloatRange(min=0.1, max=3600),
            metavar="SECONDS",
            default=1.0,
            show_default=True,
            help="Seconds between live-view refreshes and aggregate snapshots.",
        ),
        click.option(
            "-o",
            "--output",
            type=outputs.OutputFile(dir_okay=False),
            help=f"Recording file (default: {_OUTPUT_NAME[command]} here; - for stdout).",
        ),
        THRESHOLD_OPTION,
        *STACK_OPTIONS,
        *FAMILY_OPTIONS,
        LOCKS_OPTION,
        *OPT_IN_OPTIONS,
        click.option(
            "--cpus",
            "what_if_cpus",
            type=click.IntRange(min=1, max=MAX_CPUS),
            help="What-if: scale the measured per-CPU cost of the writer's sum "
            "to N CPUs (a linear model, labelled as such; needs --sample).",
        ),
        click.option(
            "--max-events",
            type=click.IntRange(min=0, max=100_000_000),
            default=1_000_000,
            show_default=True,
            help="Keep at most this many streamed events (64 bytes each, in a "
            "temporary file until the recording is written); "
            "beyond it they are counted as dropped. Aggregates are exact regardless.",
        ),
        click.option(
            "--top",
            type=click.IntRange(min=1),
            default=15,
            show_default=True,
            help="Rows in the live view (at most; fewer when the terminal is short).",
        ),
        COMBINE_OPTION,
        click.option(
            "--html",
            type=outputs.OutputFile(dir_okay=False),
            help="Also write the HTML report (as `lockprof report`) to this file (- for stdout).",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No live view."),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the final summary as JSON (as `show --json`), alone on stdout"
            + _JSON_HELP[command]
            + ".",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


follow_option = click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Also profile the processes the target forks, and theirs, from their first "
    "instruction (attach: and those already running).",
)


def refuse_unknown_option(argv) -> None:
    """run and bench pass unknown options on to the command (`run ./ebizzy
    -m` needs no --), so a mistyped option of theirs would be taken for the
    command: `run --bogus -- true` ran "--bogus". No command starts with -."""
    if argv and argv[0].startswith("-"):
        raise click.NoSuchOption(argv[0], ctx=click.get_current_context(silent=True))


def usage_error(message: str, option: str | None = None) -> Exception:
    """A command-line error found after parsing, formatted as click's own
    (one line, `lockprof run: --lock-types: ... (see lockprof run --help)`,
    status 2): a BadParameter of the option named by its parameter name when
    it is one of the current command's, else a UsageError. Outside a click
    command, a LockprofError with status 2."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return LockprofError(message if option is None else f"{option}: {message}", exit_code=2)
    param = next((p for p in ctx.command.params if p.name == option), None)
    if param is not None:
        return click.BadParameter(message, ctx=ctx, param=param)
    return click.UsageError(message, ctx=ctx)


def parse_lock_types(text: str | None, no_contention: bool) -> tuple[str, ...] | None:
    """--lock-types TYPES: the lock types whose contention is traced."""
    if text is None:
        return None
    if no_contention:
        raise usage_error(
            "--lock-types chooses among lock:contention_* waits, which --no-contention leaves out"
        )
    given = [t.strip() for t in text.split(",") if t.strip()]
    moded = [t for t in given if t.endswith((":R", ":W"))]
    if moded:
        raise usage_error(
            f"{moded[0]}: the types are traced in both modes, each mode a row of its own "
            f"(give {_perf_type(moded[0][:-2])})",
            "lock_types",
        )
    types = tuple(dict.fromkeys(_perf_type(t) for t in given))
    unknown = [t for t in types if t not in schema.LOCK_TYPES]
    if unknown or not types:
        what = f"unknown lock type {unknown[0]!r}" if unknown else "no lock type given"
        raise usage_error(f"{what} (one or more of: {', '.join(schema.LOCK_TYPES)})", "lock_types")
    return types


# perf lock contention -Y's names for lockprof's types.
_PERF_LOCK_TYPES = {"rtmutex": "rt-mutex", "pcpu-sem": "percpu-rwsem"}


def _perf_type(name: str) -> str:
    return _PERF_LOCK_TYPES.get(name, name)


def build_options(duration, interval, threshold, no_mmap_lock, no_contention) -> CollectOptions:
    families = tuple(
        f for f, off in (("mmap_lock", no_mmap_lock), ("contention", no_contention)) if not off
    )
    if not families:
        raise usage_error("--no-mmap-lock and --no-contention leave nothing to trace")
    if threshold <= 0:  # the option refuses it; a caller from Python may not
        raise usage_error("must be longer than 0", "threshold")
    return CollectOptions(
        families=families, interval_s=interval, duration_s=duration, threshold_ns=threshold
    )


def _compile_before_pandas(options) -> None:
    """Compile the probes now, the command line checked, before pandas and
    pyarrow load: clang/LLVM's memory (~100 MB, given back once the probes
    load) then does not add to theirs, and the start-up peak is ~165 MB, not
    ~280 (bpf.compile_early; ~200 MB before only the run's families were
    compiled). Then pyarrow loads, with malloc (allocator.py).
    Run by `lockprof` itself, pandas is not loaded yet; imported (tests),
    it may be, and nothing is lost but the saving."""
    from profiler import bpf

    bpf.compile_early(run_families(options))
    allocator.arrow_allocates_with_malloc()


def run_families(options) -> tuple[str, ...]:
    """The probe families a collection's plans will hold (session._plans):
    its families, and "locks" with a lock spec. The early compile must
    compile the same ones as the session, or the session compiles again."""
    return (*options.families, *(("locks",) if options.locks else ()))


def checked_spec(argument: str):
    """Resolve --locks and check its binary and functions before attaching."""
    from profiler import bpf, lockspec

    spec = lockspec.resolve(argument)
    lockspec.check_target(spec, bpf.user_symbols, lockspec.kernel_symbols)
    return spec


def spec_files(lock_spec: str | None) -> list[Path]:
    """The files a --locks SPEC reads: a TOML spec and the binary its
    `target` names, NAME@BINARY's binary, a built-in spec's library (inputs
    an output must not overwrite)."""
    if not lock_spec:
        return []
    from profiler import lockspec

    named = [lock_spec, lock_spec.partition("@")[2]]
    with contextlib.suppress(LockprofError):  # a bad spec is refused later, in its own words
        spec = lockspec.resolve(lock_spec)
        if not spec.in_kernel:
            named.append(spec.target)
    return [Path(name) for name in dict.fromkeys(named) if name and Path(name).is_file()]


def refuse_clobbered_outputs(output: Path | None, html: Path | None, lock_spec: str | None) -> None:
    """-o and --html must not overwrite recorded data or an input (one line,
    exit 2, before anything starts). A new recording may replace an older
    one at an explicit -o (the default name is new each time)."""
    inputs = spec_files(lock_spec)
    if output is not None:
        outputs.refuse_clobbering(output, inputs, "-o", "the recording", kind=outputs.RECORDING)
    if html is None:
        return
    if output is not None and outputs.same_file(html, output):
        raise LockprofError(
            f"--html {html} is the recording's path (-o); the report would overwrite it",
            exit_code=2,
        )
    outputs.refuse_clobbering(html, inputs, "--html", "the HTML report")


def refuse_two_things_on_stdout(output: Path | None, html: Path | None, as_json: bool) -> None:
    """stdout holds one of the recording (-o -), the report (--html -) and
    the JSON summary: two of them in one stream are neither."""
    on_stdout = [
        name
        for name, there in (
            ("-o", outputs.is_our_stdout(output)),
            ("--html", outputs.is_our_stdout(html)),
            ("--json", as_json),
        )
        if there
    ]
    if len(on_stdout) > 1:
        raise LockprofError(
            f"{' and '.join(on_stdout)} would both write to stdout; send one to a file",
            exit_code=2,
        )


def events_of(count: int | None, threshold_ns: int | None) -> str:
    """'93 events over 100us', or what a damaged events table leaves."""
    if count is None:
        return "events table damaged"
    return f"{render.counted(count, 'event')} over {render.fmt_ns(threshold_ns)}"


def load_recording(path: str | Path, summary_only: bool = False):
    """recording.load() for a command that reads one: a table found
    damaged (now or when read later) gets a warning line, naming what it
    leaves out, and the rest is read."""
    from profiler import recording

    def warn(name: str, why: str) -> None:
        text = f"lockprof: warning: {path}: {recording.damage_text(name, why)}"
        click.echo(render.safe_text(text), err=True)

    return recording.load(path, summary_only=summary_only, on_damage=warn)


def default_output(mode: str, tgid: int) -> Path:
    """The recording's name without -o: new each time, never over a file
    (outputs.ChosenName: two lockprofs of the same second get -2)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return outputs.ChosenName(f"lockprof-{mode}-{tgid or 'all'}-{stamp}.lpr")


class LiveView:
    """Refreshing table on a terminal; one progress line per interval otherwise.

    The terminal can go away while collecting (a closed pty gives EIO, a
    closed pipe EPIPE, raised by render.console()'s consoles): the view then
    turns itself off and collection goes on. An OSError from the view ended
    the collection and lost its data (bench/soak.py killed with its pty,
    2026-11-27)."""

    def __init__(self, top: int, quiet: bool):
        self.top = top
        self.quiet = quiet
        self.console = render.console(stderr=False)
        self.err = render.console(stderr=True)
        self._live: Live | None = None
        self._frame: render.LiveFrame | None = None  # the last one shown
        self.gone: OSError | None = None  # why the view turned itself off

    def _guarded(self, write: Callable[[], None]) -> None:
        if self.gone is not None:
            return
        try:
            write()
        except OSError as exc:
            self.gone = exc
            self.quiet = True
            self.stop()

    def attached(self, target: Target, probes: list) -> None:
        self._guarded(lambda: self._attached(target, probes))

    def _attached(self, target: Target, probes: list) -> None:
        mechanisms = sorted({p.mechanism for p in probes})
        table = not self.quiet and self.console.is_terminal
        # A table redrawn in place erased the lines a command wrote to the
        # same terminal between refreshes (and left stale table lines): a
        # line an interval then, as perf stat -I prints.
        shared = table and target.writes_to(sys.stdout.fileno())
        note = "; the live view is a line an interval: the command writes here" if shared else ""
        self.err.print(
            Text(
                render.safe_text(
                    f"lockprof: attached {len(probes)} probes ({', '.join(mechanisms)}) to "
                    f"{target.describe()}; Ctrl-C to stop{note}"
                )
            )
        )
        if table and not shared:
            self._live = Live(
                Text("waiting for the first interval..."),
                console=self.console,
                auto_refresh=False,
                transient=True,
            )
            self._live.start()

    def update(self, state: LiveState) -> bool:
        """Show state; False once the view is off for good (the terminal is
        gone): the collection then stops building live states."""
        if not self.quiet:
            self._guarded(lambda: self._update(state))
        return self.gone is None

    def _update(self, state: LiveState) -> None:
        lost = state.errors.get("ringbuf_full", 0)
        # Off-CPU rows (--offcpu) measure blocked time, not lock waits: on a
        # terminal, a table of their own, as in the summary (they were lock
        # rows, their blocked time under `wait total`).
        rows = [r for r in state.rows if r.get("source") != "offcpu"]
        if self._live is not None:
            last = self._frame.shown if self._frame is not None else None
            self._frame = render.LiveFrame(
                rows,
                live_header(state),
                state.errors,
                lost,
                self.top,
                more_locks=state.more_rows,
                cpu_totals=state.cpu_totals,
                guess=last,
                offcpu_rows=[r for r in state.rows if r.get("source") == "offcpu"],
            )
            self._live.update(self._frame, refresh=True)
            return
        # The figures of the per-CPU line, summed: what the summary's says.
        totals = state.cpu_totals if state.cpu_totals is not None else render.cpu_totals_of(rows)
        # The rows are those of the busiest locks only (session.LIVE_LOCKS).
        quieter = f" and {state.more_rows:,} quieter locks" if state.more_rows else ""
        self.err.print(
            f"[{state.elapsed_s:7.1f}s] since start: {len(rows):,} lock rows{quieter}, "
            f"{render.activity(render.all_cpus(totals))}, {events_kept(state)}, lost {lost:,}"
        )

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            # Live.stop() puts sys.stdout and sys.stderr back (in a finally)
            # before its last writes, which fail if the terminal is gone.
            with contextlib.suppress(OSError):
                live.stop()


def live_header(state: LiveState) -> str:
    """The live view's first line: its figures are totals since the start,
    as the final summary's are (not the last interval's); events are the
    waits and holds kept one by one, those over the threshold, as the
    summary's header counts them."""
    since = f"totals since start, {state.elapsed_s:.1f}s"
    return f"lockprof  {state.target}  {since}  {events_kept(state)}"


def events_kept(state: LiveState) -> str:
    """'93 events over 100us': the waits and holds kept one by one so far."""
    over = f" over {render.fmt_ns(state.threshold_ns)}" if state.threshold_ns is not None else ""
    return f"{render.counted(state.events, 'event')}{over}"


def run_collection(
    target: Target,
    options: CollectOptions,
    output: Path | None,
    top: int,
    quiet: bool,
    as_json: bool,
    working: set[str],
    html: Path | None = None,
    stop: StopFlag | None = None,
) -> int:
    """Collect, save the recording, print the summary, write the HTML report
    if asked. Returns the exit code: 1 when the report could not be written
    (the recording is kept either way). stop: the installed signal flag
    (profiler.signals), which covers writing too."""
    from profiler import recording
    from profiler.cli import report
    from profiler.session import collect

    output = output or default_output(target.mode, target.tgid)
    outputs.check_writable(output)
    if html is not None:
        report.check_output(html)
    view = LiveView(top, quiet or as_json)
    try:
        rec = collect(
            options,
            target,
            working,
            # Quiet: no live state is built at all (it costs CPU every interval).
            on_interval=None if quiet or as_json else view.update,
            on_attached=lambda probes: view.attached(target, probes),
            stop=stop,
            on_stopped=view.stop,  # not a frozen frame while the recording is built
        )
    finally:
        view.stop()
    try:
        output = recording.save(rec, output)
        not_saved = None
    except LockprofError as exc:  # the data went to a rescue file (the error names it), or is lost
        not_saved = exc
    allocator.release_free_heap()  # Parquet's buffers, before the summary's own
    # Not saved: the summary is still printed (all the user has on screen),
    # then the error naming the rescue file.
    written = (
        f"lockprof: {_ending(rec.meta)}; recording written to {output}"
        if not_saved is None
        else f"lockprof: {render.safe_text(not_saved)}"
    )
    try:
        # --json: every row (README); the table: the busiest. On stderr when
        # stdout carries the recording or the report (-o -, --html -).
        print_summary(
            rec,
            as_json,
            top=None if as_json else FINAL_SUMMARY_TOP,
            source=output if not_saved is None else None,
            to_stderr=outputs.is_our_stdout(output) or outputs.is_our_stdout(html),
            combine=options.combine_locks,
        )
        code = 0
    except OSError as exc:  # stdout is gone (a closed pipe or terminal); the recording is not
        code = 141 if isinstance(exc, BrokenPipeError) else 1
        if code == 141:
            silence_stream(sys.stdout)  # a reader that stopped reading (`| head`)
        else:
            written += f" (summary not printed: {exc.strerror or exc})"
    say(written)
    if not_saved is not None:
        if html is not None:
            say(f"lockprof: report not written (the recording was not written to {output})")
        return not_saved.exit_code
    if html is None:
        return code or command_status(rec.meta, stop)
    try:
        report.write_html(rec, html, source=str(output))
    except Exception as exc:  # the recording is safe on disk: say why in one line
        if os.environ.get("LOCKPROF_DEBUG") and not isinstance(exc, LockprofError):
            raise
        reason = str(exc) if isinstance(exc, LockprofError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())
        say(f"lockprof: report not written ({reason}); recording kept in {output}")
        return code or 1
    say(f"lockprof: report written to {html}")
    return code or command_status(rec.meta, stop)


def command_status(meta: dict, stop: StopFlag | None = None) -> int:
    """`run` exits as its command did, as time, perf stat and strace do: its
    status, 128 + N when signal N killed it. When signal N stopped lockprof
    and the command was still running after its grace (its status unknown),
    128 + N too, as a signal before collection gives: `lockprof run -- make
    && deploy` must not deploy after a Ctrl-C. Otherwise 0 where there is
    none (attach, record, a command still running at -d). lockprof's own
    failures come first (the caller's code)."""
    status, _signal = recorded_exit(meta)
    if status is None and meta.get("mode") == "run" and stop is not None and stop.signum:
        return 128 + stop.signum
    return status if isinstance(status, int) and 0 < status < 256 else 0


def _ending(meta: dict) -> str:
    """Why collection stopped, and how the command ended when that was not
    the reason ("SIGINT received; command killed by SIGINT")."""
    reason = str(meta.get("stop_reason"))
    status, signame = recorded_exit(meta)
    if status is None and meta.get("mode") == "run":
        return f"{reason}; command still running as pid {meta.get('target_pid')}, not waited for"
    if status is None or reason.startswith("command "):
        return reason
    return f"{reason}; command {exit_text(status, signame)}"


def say(line: str) -> None:
    """One line on stderr, if stderr is still there (after collection: the
    recording is written whatever becomes of the terminal)."""
    try:
        click.echo(render.safe_text(line), err=True)
    except OSError:
        silence_stream(sys.stderr)


def silence_stream(stream: TextIO) -> None:
    """Point stream (stdout, stderr) at /dev/null once its reader is gone,
    so that Python's flush at exit does not report the broken pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def write_json_lines(document: dict, out: TextIO) -> None:
    """document as JSON, each top-level field and each entry of a top-level
    list (or summary.LockRows, built as written) on its own line. json.dump
    with indent=2 runs in Python, a call per token: 78k lock rows took ~10 s;
    one compact (C) dump per line does not."""
    from profiler.summary import LockRows

    out.write("{")
    for n, (key, value) in enumerate(document.items()):
        out.write(",\n  " if n else "\n  ")
        out.write(json.dumps(key) + ": ")
        if isinstance(value, list | LockRows) and len(value):
            out.write("[")
            for i, entry in enumerate(value):
                out.write(",\n    " if i else "\n    ")
                out.write(json.dumps(entry))
            out.write("\n  ]")
        else:
            out.write(json.dumps(list(value) if isinstance(value, LockRows) else value))
    out.write("\n}\n")


@dataclass
class _ShownRows:
    """What the summary table needs of every lock row, read once: the first
    `top` rows and the still-held rows (what the table reads of them:
    table_row()), how many there are and per-CPU totals."""

    first: list[dict] = field(default_factory=list)
    count: int = 0
    cpu_totals: dict[int, CpuFigures] = field(default_factory=dict)
    held: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Iterable[dict], top: int | None) -> _ShownRows:
        shown = cls()
        for row in rows:
            shown.count += 1
            wanted = top is None or len(shown.first) < top
            if wanted or row.get("still_held"):
                kept = table_row(row)  # one copy, in either list or both
                if wanted:
                    shown.first.append(kept)
                if row.get("still_held"):
                    shown.held.append(kept)
            render.add_cpu_totals(shown.cpu_totals, row)
        return shown


# What the summary table reads of a lock row (render.summary_cells and the
# still-held lines), and of its wait and hold figures. `show` keeps every
# row it prints until the table is laid out: a 2-hour recording's 74k rows,
# per-CPU figures and all, were ~175 MB; these parts of them ~80 MB.
TABLE_FIELDS = (
    "lock",
    "locks_combined",
    "lock_id",
    "lock_addr",
    "owner_pid",
    "owner_comm",
    "mode",
    "acquisitions",
    "contended",
    "reader_writer_ratio",
    "downgrades",
    "trylock_failures",
    "still_held",
)
TABLE_FIGURES = {"wait_ns": ("total", "avg", "p50", "p99", "max"), "hold_ns": ("avg", "p99", "max")}


def table_row(row: dict) -> dict:
    """The parts of a lock row the summary table reads (TABLE_FIELDS)."""
    kept = {name: row.get(name) for name in TABLE_FIELDS}
    for name, figures in TABLE_FIGURES.items():
        values = row.get(name)
        kept[name] = {figure: values.get(figure) for figure in figures} if values else values
    return kept


def print_summary(
    rec: Recording,
    as_json: bool,
    top: int | None,
    what_if_cpus: int | None = None,
    source: str | Path | None = None,
    sort: str = "wait_total",
    to_stderr: bool = False,
    combine: bool = False,
) -> None:
    """The summary, a table (its first `top` rows) or JSON. Rows are built
    as they are used: only the table's are kept. source: the recording's
    file, for the hint that `lockprof show` lists every row; sort: what
    orders the rows (options.SORT_KEYS); to_stderr: stdout carries other
    bytes (the recording, the report); combine: locks of one name in one
    row (--combine-locks)."""
    from profiler import summary

    document = summary.summary_document(rec, what_if_cpus, top, sort, combine)
    if as_json:
        write_json_lines(document, sys.stderr if to_stderr else sys.stdout)
        return
    meta = rec.meta
    rusage = meta.get("rusage") or {}
    header = (
        f"{meta.get('target') or 'unknown target'}: {meta.get('duration_s', 0):.2f}s "
        f"on {meta.get('kernel') or 'an unknown kernel'}, "
        f"{meta.get('cpus') or '?'} CPUs, {events_of(rec.event_count, meta.get('threshold_ns'))}"
    )
    out = render.console(stderr=to_stderr)
    rows = document.pop("locks")
    shown = _ShownRows.of(rows.locks, top)
    offcpu_rows = rows.offcpu
    del rows  # what built the rows (~30 MB for a 2-hour recording): shown has them
    errors, lost = meta.get("errors", {}), meta.get("lost_events", 0)
    footer = (errors, lost, top, 0, shown.cpu_totals, shown.count)
    named = str(source) if source is not None else None
    # The hint under a cut table keeps the options that made its rows.
    show_flags = ("-c " if combine else "") + (f"-k {sort} " if sort != "wait_total" else "")
    held = shown.held + [r for r in offcpu_rows if r.get("still_held")]
    # One naming for the table and the still-held lines under it: a lock
    # told apart from another (render.row_labels) reads the same in both.
    labels = render.row_labels(shown.first + held)
    first_labels, held_labels = labels[: len(shown.first)], labels[len(shown.first) :]
    if len(shown.first) > render.PLAIN_TABLE_ROWS:
        out.print(Text(render.safe_text(header), style="bold"))
        lines = render.plain_summary_lines(shown.first, first_labels)
        out.file.writelines(f"{line}\n" for line in lines)
        out.print(
            Group(*render.view_footer(shown.first, *footer, source=named, show_flags=show_flags))
        )
    else:
        out.print(
            render.view(
                shown.first,
                header,
                *footer,
                source=named,
                labels=first_labels,
                show_flags=show_flags,
            )
        )
    if offcpu_rows:
        out.print(render.offcpu_table(offcpu_rows, top))
    if document.get("writer_cost"):
        for line in render.writer_cost_lines(document["writer_cost"]):
            out.print(line)
    from profiler.foreign_tasks import foreign_task_rows  # pandas: not before the compile

    foreign = foreign_task_rows(rec.tasks, rec.locks, rec.meta)  # all: the hint counts the rest
    for line in render.foreign_task_lines(foreign, top or render.FOREIGN_TASK_LINES):
        out.print(line)
    if rusage.get("user_s") is not None:
        out.print(
            f"rusage  user {rusage['user_s']:.2f}s  sys {rusage['sys_s']:.2f}s  "
            f"elapsed {rusage['elapsed_s']:.2f}s  minor faults {rusage['minor_faults']:,}"
        )
    for note in document.get("notes") or []:
        out.print(Text(render.safe_text(f"note: {note}")))
    for row, label in zip(held, held_labels, strict=True):
        out.print(Text(f"still held at the end: {label} {row['mode']} x{row['still_held']}"))


def collect_command(
    target_factory,
    duration,
    interval,
    output,
    threshold,
    stack_threshold,
    stack_rate,
    no_mmap_lock,
    no_contention,
    top,
    quiet,
    as_json,
    html=None,
    lock_spec=None,
    offcpu=False,
    sample=False,
    sample_hz=99,
    what_if_cpus=None,
    max_events=1_000_000,
    follow=False,
    lock_types=None,
    combine=False,
) -> None:
    options = build_options(duration, interval, threshold, no_mmap_lock, no_contention)
    options.combine_locks = combine
    probe_settings(
        options, stack_threshold, stack_rate, lock_types, no_contention, offcpu, sample, sample_hz
    )
    options.max_events = max_events
    if follow:
        options.families += ("follow",)
    options.what_if_cpus = what_if_cpus
    refuse_sampling_options_alone(sample, what_if_cpus)
    refuse_clobbered_outputs(output, html, lock_spec)
    refuse_two_things_on_stdout(output, html, as_json)
    # Signals from here (or from start-up, see profiler.signals) to the end.
    stop = signals.adopt()
    try:
        code = _start_and_collect(
            stop, target_factory, options, lock_spec, output, top, quiet, as_json, html
        )
    finally:
        stop.uninstall()
    if code:
        raise SystemExit(code)


def probe_settings(
    options: CollectOptions,
    stack_threshold: int,
    stack_rate: int,
    lock_types: str | None,
    no_contention: bool,
    offcpu: bool,
    sample: bool,
    sample_hz: int,
) -> CollectOptions:
    """Put probe_options' choices (those build_options does not take) into
    options: a collection's and doctor --overhead's, alike."""
    options.lock_types = parse_lock_types(lock_types, no_contention)
    options.stack_threshold_ns = stack_threshold
    options.stack_rate = stack_rate
    options.families += tuple(f for f, on in (("offcpu", offcpu), ("sample", sample)) if on)
    options.sample_hz = sample_hz
    return options


def warn_cpus_without_samples(meta: dict, what_if_cpus: int | None, path) -> bool:
    """--cpus on a recording without samples has nothing to scale: said in
    one line (not an error: the summary or report is still what was asked
    for), and True. show and report alike."""
    ignored = what_if_cpus is not None and "sample" not in (meta.get("families") or [])
    if ignored:
        click.echo(
            f"lockprof: --cpus scales the sampled cost of the writer's sum, and {path} has "
            "no samples (record with --sample): ignored",
            err=True,
        )
    return ignored


def refuse_sampling_options_alone(sample: bool, what_if_cpus: int | None) -> None:
    """--cpus and --sample-hz only shape --sample's estimate of the writer's
    sum: given without --sample they did nothing, and said nothing."""
    if sample:
        return
    ctx = click.get_current_context(silent=True)
    hz_given = ctx is not None and (
        ctx.get_parameter_source("sample_hz") == click.core.ParameterSource.COMMANDLINE
    )
    purpose = {
        "--cpus": "it scales the sampled cost of the writer's sum",
        "--sample-hz": "it is the sampling frequency",
    }
    given = [o for o, on in (("--cpus", what_if_cpus is not None), ("--sample-hz", hz_given)) if on]
    if given:
        raise usage_error(f"{given[0]} needs --sample: {purpose[given[0]]}")


def _start_and_collect(
    stop: StopFlag, target_factory, options, lock_spec, output, top, quiet, as_json, html
) -> int:
    privileges.require()
    if lock_spec:
        spec = checked_spec(lock_spec)
        privileges.require(uprobes=not spec.in_kernel)
        options.locks = (spec,)
    from profiler import doctor

    warning = privileges.symbols_warning()
    if warning:
        click.echo(warning, err=True)
    # Named tracefs probes that a killed BCC process left behind (none when
    # the kernel creates probes through perf_event_open, as here).
    removed = doctor.cleanup_stale_probes()
    if removed:
        click.echo(
            render.safe_text(
                f"lockprof: removed {len(removed)} stale probe events left by killed "
                f"BCC processes ({', '.join(removed[:3])}{', ...' if len(removed) > 3 else ''})"
            ),
            err=True,
        )
    stop.check_before_start()
    target = target_factory()
    try:
        # The outputs as run_collection checks them again (report.check_output
        # comes to check_directory), here before the compile: said at once.
        output = output or default_output(target.mode, target.tgid)
        outputs.check_writable(output)
        if html is not None:
            outputs.check_directory(html, "report")
        _compile_before_pandas(options)
        stop.check_before_start()
    except (signals.Interrupted, LockprofError):
        if isinstance(target, CommandTarget):
            target.abandon()
        raise
    return run_collection(
        target,
        options,
        output,
        top,
        quiet,
        as_json,
        doctor.cheap_mechanisms(),
        html=html,
        stop=stop,
    )
