"""lockprof precompile: compile the probes into the compiled-probe cache ahead
of the first collection (make setup runs it)."""

from __future__ import annotations

import json

import click

from profiler import privileges, probecache
from profiler.probes import DEFAULT_FAMILIES, OPTIONAL_FAMILIES

# The opt-in probe families (a collection's --locks, --offcpu, --sample),
# each compiled in only when named: each set of them is an entry of its own.
OPTIONAL = tuple(sorted(OPTIONAL_FAMILIES))


@click.command("precompile")
@click.option(
    "--with",
    "extra",
    type=click.Choice(OPTIONAL),
    multiple=True,
    help="Also compile in this opt-in family, as a collection with --locks, "
    "--offcpu or --sample has it (repeat for several; the set is one entry).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def command(extra, as_json) -> None:
    """Compile lockprof's probes for this kernel, load every program (the
    kernel verifies them, nothing is attached) and keep them in the
    compiled-probe cache, so that the next attach, run or record (without
    --locks, --offcpu or --sample: see --with) loads them instead of
    compiling (about a second less to the first live row). Does nothing
    if they are there already. `make setup` runs it; a kernel or
    BCC upgrade needs it again (or one collection, which compiles and keeps
    them). Root only, as the cache is.

    \b
    Examples:
      lockprof precompile                  what attach, run and record load
      lockprof precompile --with offcpu    what `record -a --offcpu` loads
      LOCKPROF_CACHE_DIR=/srv/lp lockprof precompile
    """
    from profiler import bpf  # bcc's ctypes, only when it runs

    # The cache is root's only: a user with CAP_BPF and CAP_PERFMON is told
    # that, not that those capabilities would do.
    directory = probecache.usable_dir()
    privileges.require()
    families = tuple(dict.fromkeys((*DEFAULT_FAMILIES, *extra)))  # --with twice: once
    done = bpf.precompile(families, directory)
    if as_json:
        result = {
            "directory": str(done.directory),
            "families": list(families),
            "already_cached": done.already,
            "compile_s": done.seconds,
        }
        click.echo(json.dumps(result))
    elif done.already:
        click.echo(f"lockprof: probes for {', '.join(families)} already in {done.directory}")
    else:
        click.echo(
            f"lockprof: probes for {', '.join(families)} compiled in {done.seconds:.1f} s, "
            f"kept in {done.directory}"
        )
