"""Helpers shared by the unit tests (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from profiler import aggregate, schema
from profiler.hist import slot_of

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
# `lockprof run -- workloads/bin/mmapcount -n 1000`, recorded on the dev machine.
RECORDING = DATA / "mmapcount-1000.lpr"

_STRUCT = re.compile(r"^struct\s+(\w+)\s*\{(.*?)^\};", re.S | re.M)
_FIELD = re.compile(r"^\s*(struct\s+\w+|\w+)\s+(\w+)\s*(?:\[(\w+)\])?\s*;", re.M)


def header_structs() -> dict[str, list[tuple[str, str, str | None]]]:
    """struct name -> [(type, field, array length or None)] from lockprof.h."""
    text = (schema.probes_dir() / "lockprof.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return {
        name: [(t, f, n or None) for t, f, n in _FIELD.findall(body)]
        for name, body in _STRUCT.findall(text)
    }


def flat_fields(structs, name: str, prefix: str = "") -> list[str]:
    """The column names profiler.bpf._flat_fields derives from the ctypes
    layout BCC builds for `struct name`: nested structs become a.b, arrays a[i]."""
    names: list[str] = []
    for ftype, field, length in structs[name]:
        full = f"{prefix}{field}"
        if ftype.startswith("struct "):
            names += flat_fields(structs, ftype.split()[1], f"{full}.")
        elif length is not None:
            count = int(length) if length.isdigit() else schema.const(length)
            names += [f"{full}[{i}]" for i in range(count)]
        else:
            names.append(full)
    return names


class Snap:
    """Builds the cumulative per-CPU arrays BpfSession.read_stats() returns:
    {(lock, flags, source, index): uint64 array of shape (cpus, len(columns))},
    index being the row's place in the kernel map (here: order of creation)."""

    def __init__(self, columns: list[str], cpus: int = 2):
        self.columns = columns
        self.cpus = cpus
        self.index = {c: i for i, c in enumerate(columns)}
        self.rows: dict[tuple[int, int, int], np.ndarray] = {}

    def row(self, key: tuple[int, int, int]) -> np.ndarray:
        if key not in self.rows:
            self.rows[key] = np.zeros((self.cpus, len(self.columns)), dtype=np.uint64)
        return self.rows[key]

    def set(self, key, cpu: int, values: dict[str, int]) -> Snap:
        """Overwrite columns by name ("acquisitions", "wait.slots[5]", ...)."""
        array = self.row(key)
        for name, value in values.items():
            array[cpu, self.index[name]] = value
        return self

    def hist_add(self, key, cpu: int, which: str, ns: int) -> None:
        """What lp_hist_add() does in BPF, for one sample."""
        array = self.row(key)
        i = self.index
        array[cpu, i[f"{which}.count"]] += 1
        array[cpu, i[f"{which}.total_ns"]] += ns
        array[cpu, i[f"{which}.max_ns"]] = max(int(array[cpu, i[f"{which}.max_ns"]]), ns)
        slots = schema.const("LP_HIST_SLOTS")
        array[cpu, i[f"{which}.slots[{slot_of(ns, slots)}]"]] += 1

    def bump(self, key, cpu: int, counter: str, n: int = 1) -> None:
        self.row(key)[cpu, self.index[counter]] += n

    def copy(self) -> dict[tuple[int, int, int, int], np.ndarray]:
        return {(*k, index): v.copy() for index, (k, v) in enumerate(self.rows.items())}


EMPTY_CALLERS = pd.DataFrame(columns=["lock", "stack_id", "flags", "count", "total_ns", "max_ns"])


def interval_row(
    lock: int, flags: int, source: int, cpu: int = 0, interval: int = 1, **values
) -> dict:
    """One row of the intervals table (aggregate.INTERVAL_COLUMNS), zeros by default."""
    nslots = schema.const("LP_HIST_SLOTS")
    row: dict = {
        "interval": interval,
        "t_s": float(interval),
        "lock": lock,
        "flags": flags,
        "source": source,
        "cpu": cpu,
    }
    for column in aggregate.INTERVAL_COLUMNS[len(row) :]:
        row[column] = values.pop(column, [0] * nslots if column.endswith("_slots") else 0)
    assert not values, f"unknown columns {sorted(values)}"
    return row


def record_dicts(records: np.ndarray) -> list[dict]:
    """Interval records (aggregate.delta_records) as dicts of Python values:
    lists for the histograms, None for an unknown maximum (as
    intervals_frame and interval_records take rows)."""
    rows = []
    for record in records:
        row = {column: record[column].tolist() for column in aggregate.INTERVAL_COLUMNS}
        for column in aggregate.INTERVAL_MAX_COLUMNS:
            if row[column] == aggregate.UNKNOWN_MAX:
                row[column] = None
        rows.append(row)
    return rows


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """lockprof's main() on argv: (status, stdout, stderr)."""
    from profiler.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    """The one stderr line of a failure (a nonzero status, no traceback):
    `lockprof: ...`, or `lockprof CMD: ...` for a command-line error."""
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.match(r"lockprof( [a-z]+)?: ", lines[0]), lines[0]
    return lines[0]


def intervals_frame(rows: list[dict]) -> pd.DataFrame:
    """An intervals frame of hand-made rows (dicts of aggregate.INTERVAL_COLUMNS, a
    null maximum None), as aggregate.records_frame() gives of records."""
    if not rows:
        return aggregate.empty_intervals()
    frame = pd.DataFrame(rows, columns=aggregate.INTERVAL_COLUMNS)
    frame["lock"] = frame["lock"].astype("uint64")
    for column in aggregate.INTERVAL_MAX_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    return frame


def interval_records(rows: list[dict]) -> np.ndarray:
    """Interval rows as dicts (aggregate.INTERVAL_COLUMNS, a null maximum None, as
    intervals_frame() takes them) as records; a null maximum becomes
    UNKNOWN_MAX. Collection makes its records from snapshots
    (aggregate.delta_records)."""
    records = np.zeros(len(rows), dtype=aggregate.interval_record_dtype())
    for column in aggregate.INTERVAL_COLUMNS:
        values = [row[column] for row in rows]
        if column in aggregate.INTERVAL_MAX_COLUMNS:
            values = [aggregate.UNKNOWN_MAX if v is None else v for v in values]
        if values:
            records[column] = values
    return records
