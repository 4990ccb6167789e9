"""lockprof doctor: which kernel mechanisms work here."""

from __future__ import annotations

import json

import click
from rich.text import Text

from profiler import doctor, render


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def command(as_json) -> None:
    """Load and attach a tiny program per mechanism and report what works:
    tracepoints (raw and classic), kprobes, fentry, uprobes, perf sampling,
    BTF, and which kernel headers BCC uses. Exits 1 when the minimum
    (root, BTF and the lock tracepoints) is unusable.

    \b
    Examples:
      lockprof doctor
      lockprof doctor --json | jq '.checks[] | select(.ok | not)'
    """
    checks = doctor.run_checks()
    usable = all(c.ok for c in checks if c.required)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "usable": usable,
                    "mechanisms": sorted(doctor.working_mechanisms(checks)),
                    "checks": doctor.as_dicts(checks),
                },
                indent=2,
            )
        )
    else:
        out = render.console()
        for check in checks:
            mark, style = (
                ("ok  ", "green")
                if check.ok
                else (("FAIL", "red") if check.required else ("no  ", "yellow"))
            )
            line = Text(f"{mark} ", style=style)
            line.append(f"{check.name:<45} {render.safe_text(check.detail)}")
            out.print(line, soft_wrap=True)
        out.print(
            f"usable: {'yes' if usable else 'no'}; working mechanisms: "
            f"{', '.join(sorted(doctor.working_mechanisms(checks))) or 'none'}"
        )
    if not usable:
        raise SystemExit(1)
