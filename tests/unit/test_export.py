"""lockprof report and lockprof export, and --html on the collecting commands
(collection itself is replaced by a recorded Recording: no BPF, no root)."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import profiler
from dashboards import frames
from profiler import outputs, recording, session, summary
from profiler.cli import common, report
from profiler.cli.export import csv_frame, folded_lines
from profiler.cli.main import main
from profiler.session import CollectOptions

from .helpers import DATA, RECORDING, one_error_line, run_main

HOSTILE = DATA / "hostile-comm.lpr"
FOLDED_LINE = re.compile(r"^[^ ;]+(;[^ ;]+)* [1-9][0-9]*$")


# -- report -----------------------------------------------------------------------------


def test_report_writes_the_page(capsys, tmp_path):
    out_path = tmp_path / "r.html"
    code, out, err = run_main(capsys, "report", HOSTILE, "-o", out_path)
    assert (code, out) == (0, "")
    assert err == f"lockprof: report written to {out_path}\n"
    page = out_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="plot-timeline"' in page


def test_report_default_output_is_next_to_the_recording(capsys, tmp_path):
    copy = tmp_path / "demo.lpr"
    copy.write_bytes(HOSTILE.read_bytes())
    code, _out, _err = run_main(capsys, "report", copy)
    assert code == 0 and (tmp_path / "demo.html").is_file()


@pytest.mark.parametrize("option", ["--max-points", "--max-events"])  # its older name too
def test_report_options_reach_the_page(capsys, tmp_path, option):
    out_path = tmp_path / "r.html"
    code, _out, _err = run_main(capsys, "report", HOSTILE, "-o", out_path, option, "10")
    assert code == 0
    events = len(frames.lock_events(profiler.load(HOSTILE)))
    assert f"showing 10 of {events:,} events" in out_path.read_text()


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04garbage"])
def test_report_of_a_corrupt_recording(capsys, tmp_path, content):
    bad = tmp_path / "bad.lpr"
    bad.write_bytes(content)
    code, out, err = run_main(capsys, "report", bad, "-o", tmp_path / "r.html")
    line = one_error_line(code, err)
    assert str(bad) in line and out == ""
    assert not (tmp_path / "r.html").exists()


def test_report_of_a_missing_recording(capsys, tmp_path):
    code, _out, err = run_main(capsys, "report", tmp_path / "none.lpr", "-o", tmp_path / "r.html")
    assert one_error_line(code, err) == f"lockprof: {tmp_path / 'none.lpr'}: no such file"


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("missing/r.html", "does not exist"),
        (".", "is a directory"),
        # a file where a directory should be: it said "does not exist"
        ("file/r.html", "/file is not a directory"),
    ],
)
def test_report_to_an_unusable_path(capsys, tmp_path, where, words):
    (tmp_path / "file").write_text("")
    code, _out, err = run_main(capsys, "report", HOSTILE, "-o", tmp_path / where)
    assert words in one_error_line(code, err)


def test_report_of_a_recording_with_unexpected_content(capsys, tmp_path, monkeypatch):
    """Content that passes load() but that a builder cannot use: one line."""
    rec = profiler.load(HOSTILE)
    monkeypatch.setattr(report.recording, "load", lambda path, **_options: rec)
    rec.callers = rec.callers.drop(columns=["total_ns"])
    code, _out, err = run_main(capsys, "report", HOSTILE, "-o", tmp_path / "r.html")
    line = one_error_line(code, err)
    assert "cannot build a report" in line and "internal error" not in line


# -- export -------------------------------------------------------------------------------


def test_folded_stacks_file(capsys, tmp_path):
    out_path = tmp_path / "stacks.folded"
    code, _out, err = run_main(capsys, "export", HOSTILE, "--folded", out_path)
    assert code == 0 and "folded stacks written" in err
    lines = out_path.read_text().splitlines()
    assert lines and all(FOLDED_LINE.match(line) for line in lines), lines[:3]
    rec = profiler.load(HOSTILE)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == rec.callers["total_ns"].sum()
    roots = {line.split(";", 1)[0].split(" ")[0] for line in lines}
    assert roots & {"entry_SYSCALL_64_after_hwframe", "asm_exc_page_fault"}
    assert not any("bpf_prog_" in line or "+0x" in line for line in lines)


def test_folded_stacks_to_stdout(capsys):
    code, out, err = run_main(capsys, "export", HOSTILE, "--folded", "-")
    assert code == 0 and err == ""
    assert out.splitlines() == folded_lines(profiler.load(HOSTILE))


def test_csv_tables(capsys, tmp_path):
    directory = tmp_path / "csv"
    code, _out, _err = run_main(capsys, "export", HOSTILE, "--csv", directory)
    assert code == 0
    rec = profiler.load(HOSTILE)
    names = {p.name for p in directory.iterdir()}
    assert names == {f"{t}.csv" for t in recording.TABLES} | {"summary.csv", "meta.json"}
    for table in recording.TABLES:
        frame = pd.read_csv(directory / f"{table}.csv")
        assert list(frame.columns) == list(rec.table(table).columns)
        assert len(frame) == len(rec.table(table))
    intervals = pd.read_csv(directory / "intervals.csv")
    first = [int(v) for v in intervals["wait_slots"][0].split(";")]
    assert first == list(rec.intervals["wait_slots"][0])
    summary = pd.read_csv(directory / "summary.csv")
    assert {"lock", "mode", "wait_total_ns", "wait_p99_ns", "hold_max_ns"} <= set(summary.columns)
    assert summary["wait_total_ns"].sum() == frames.summary_frame(rec)["wait_total"].sum()
    assert "</script><b>x" in set(summary["owner_comm"].dropna())


def test_csv_into_a_file_is_refused_before_reading_the_recording(capsys, tmp_path):
    """An output refusal is status 2, before any work (README, "Outputs never
    destroy recorded data"): --csv naming a file was status 1, after the
    recording had been read."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    missing = tmp_path / "missing.lpr"  # read first, this would say so
    code, _out, err = run_main(capsys, "export", missing, "--csv", notes)
    assert one_error_line(code, err) == f"lockprof: --csv {notes} is not a directory"
    assert code == 2 and notes.read_text() == "mine\n"


def test_csv_frame_joins_lists():
    frame = pd.DataFrame({"frames": [["a+0x1", "b+0x2"], []], "n": [1, 2]})
    assert csv_frame(frame)["frames"].tolist() == ["a+0x1;b+0x2", ""]
    assert csv_frame(frame)["n"].tolist() == [1, 2]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_frame_neutralises_formulas(start):
    """Text a spreadsheet would run as a formula (CSV injection) is made text
    with a leading ' ; numbers, lists and other text are left alone."""
    text = f'{start}HYPERLINK("http://x")'
    frame = pd.DataFrame(
        {
            "comm": [text, "plain", None],
            "frames": [[text, "b+0x2"], ["a"], []],
            "n": [-1, 2, 3],
            "ratio": [-0.5, 1.0, float("nan")],
        }
    )
    out = csv_frame(frame)
    assert out["comm"].tolist()[:2] == ["'" + text, "plain"] and pd.isna(out["comm"][2])
    assert out["frames"].tolist() == ["'" + text + ";b+0x2", "a", ""]
    assert out["n"].tolist() == [-1, 2, 3] and out["n"].dtype == frame["n"].dtype
    assert out["ratio"].tolist()[:2] == [-0.5, 1.0]


def test_csv_export_of_a_formula_comm(capsys, tmp_path):
    rec = profiler.load(HOSTILE)
    rec.tasks.loc[:, "comm"] = "=1+2"
    rec.locks.loc[:, "owner_comm"] = "@SUM(A1)"
    path = recording.save(rec, tmp_path / "f.lpr")
    code, _out, _err = run_main(capsys, "export", path, "--csv", tmp_path / "csv")
    assert code == 0
    text = "".join(p.read_text() for p in (tmp_path / "csv").glob("*.csv"))
    assert "'=1+2" in text and "'@SUM(A1)" in text
    assert not re.search(r"(^|,)[=@]", text, re.M)


def test_export_needs_something_to_do(capsys):
    code, _out, err = run_main(capsys, "export", HOSTILE)
    assert code == 2 and "nothing to export" in one_error_line(code, err)


def test_export_to_an_unwritable_place(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _out, err = run_main(capsys, "export", HOSTILE, "--csv", blocker / "sub")
    one_error_line(code, err)
    code, _out, err = run_main(capsys, "export", HOSTILE, "--folded", tmp_path / "no" / "f")
    assert "cannot write" in one_error_line(code, err)


def test_export_of_a_corrupt_recording(capsys, tmp_path):
    bad = tmp_path / "bad.lpr"
    bad.write_bytes(b"nope")
    code, _out, err = run_main(capsys, "export", bad, "--folded", tmp_path / "f")
    assert "not a lockprof recording" in one_error_line(code, err)


@pytest.mark.parametrize("command", ["report", "export"])
def test_help_has_examples(capsys, command):
    code, out, _err = run_main(capsys, command, "--help")
    assert code == 0 and "Examples:" in out and f"lockprof {command} " in out


def test_main_help_lists_report_and_export(capsys):
    code, out, _err = run_main(capsys, "--help")
    assert code == 0
    assert "lockprof report " in out and "lockprof export " in out


@pytest.mark.parametrize("command", ["attach", "run", "record"])
def test_collecting_commands_take_html(capsys, command):
    code, out, _err = run_main(capsys, command, "--help")
    assert code == 0 and "--html FILE" in out.replace("--html PATH", "--html FILE")


# -- --html after a collection ------------------------------------------------------------


class FakeTarget:
    mode = "run"
    tgid = 4242

    def describe(self) -> str:
        return "pid 4242 (fake)"


@pytest.fixture
def fake_collect(monkeypatch):
    rec = profiler.load(HOSTILE)
    rec.meta["stop_reason"] = "command exited with status 0"
    monkeypatch.setattr(session, "collect", lambda *args, **kwargs: rec)
    return rec


def collect(tmp_path, html: Path | None, as_json: bool = True) -> int:
    return common.run_collection(
        FakeTarget(),  # type: ignore[arg-type]
        CollectOptions(families=("mmap_lock", "contention")),
        tmp_path / "rec.lpr",
        top=5,
        quiet=True,
        as_json=as_json,
        working=set(),
        html=html,
    )


def test_html_after_collection(capsys, tmp_path, fake_collect):
    code = collect(tmp_path, tmp_path / "rec.html")
    _out, err = capsys.readouterr()
    assert code == 0
    assert (tmp_path / "rec.lpr").is_file() and (tmp_path / "rec.html").is_file()
    assert err.splitlines()[-1] == f"lockprof: report written to {tmp_path / 'rec.html'}"


def test_html_failure_keeps_the_recording(capsys, tmp_path, fake_collect, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plotly\nexploded")

    monkeypatch.setattr(report, "write_html", broken)
    code = collect(tmp_path, tmp_path / "rec.html")
    _out, err = capsys.readouterr()
    assert code == 1
    assert profiler.load(tmp_path / "rec.lpr").meta["target_pid"] == fake_collect.meta["target_pid"]
    last = err.splitlines()[-1]
    assert last == (
        "lockprof: report not written (RuntimeError: plotly exploded); "
        f"recording kept in {tmp_path / 'rec.lpr'}"
    )
    assert not (tmp_path / "rec.html").exists()


def test_html_path_is_checked_before_collecting(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("collected although the report could not be written")

    monkeypatch.setattr(session, "collect", must_not_run)
    with pytest.raises(profiler.recording.LockprofError, match="does not exist"):
        collect(tmp_path, tmp_path / "missing" / "r.html")


def test_report_of_a_recording_with_a_broken_table(capsys, tmp_path):
    """A broken events table made every reader refuse the recording; the
    report is written without the events, saying so on stderr and on the
    page. Broken aggregates still refuse it."""
    rec = profiler.load(HOSTILE)
    rec.events = rec.events.drop(columns=["comm"])
    broken = recording.save(rec, tmp_path / "broken.lpr")
    code, _out, err = run_main(capsys, "report", broken, "-o", tmp_path / "r.html")
    assert code == 0 and "Traceback" not in err
    assert err.splitlines()[0] == (
        f"lockprof: warning: {broken}: table events is damaged (lacks column comm): its "
        "waits and holds over the threshold (timelines, the events export) are left out; "
        "the aggregates are whole"
    )
    page = (tmp_path / "r.html").read_text()
    assert "<b>Recording damaged</b>: table events is damaged (lacks column comm)" in page
    # Without its events member, show cannot count them: null, with a note.
    without = tmp_path / "without-events.lpr"
    with zipfile.ZipFile(broken) as src, zipfile.ZipFile(without, "w") as dst:
        for item in src.infolist():
            if item.filename != "events.parquet":
                dst.writestr(item, src.read(item))
    code, out, err = run_main(capsys, "show", "--json", without)
    assert code == 0 and json.loads(out)["events"] is None
    notes = json.loads(out)["notes"]
    assert "table events is damaged (missing): its waits" in " ".join(notes)
    rec.events = profiler.load(HOSTILE).events
    rec.locks = rec.locks.drop(columns=["name"])
    broken = recording.save(rec, tmp_path / "broken2.lpr")
    code, _out, err = run_main(capsys, "report", broken, "-o", tmp_path / "r2.html")
    line = one_error_line(code, err)
    assert line == f"lockprof: {broken}: corrupt recording: table locks lacks column name"
    assert not (tmp_path / "r2.html").exists()


def test_folded_to_a_directory(capsys, tmp_path):
    code, _out, err = run_main(capsys, "export", HOSTILE, "--folded", tmp_path)
    assert "is a directory" in one_error_line(code, err)


@pytest.mark.parametrize(
    ("status", "signame", "reason", "line"),
    [
        (3, None, "command exited with status 3", "command exited with status 3"),
        (143, "SIGTERM", "command killed by SIGTERM", "command killed by SIGTERM"),
        (130, "SIGINT", "SIGINT received", "SIGINT received; command killed by SIGINT"),
        (0, None, "command exited with status 0", "command exited with status 0"),
        (
            None,
            None,
            "duration 1s reached",
            "duration 1s reached; command still running as pid {pid}, not waited for",
        ),
    ],
)
def test_run_exits_as_its_command_did(
    capsys, tmp_path, fake_collect, status, signame, reason, line
):
    """As time, perf stat and strace: the command's status, 128 + N for
    signal N (none while it still runs); the recording is written either way."""
    fake_collect.meta.update(exit_status=status, exit_signal=signame, stop_reason=reason)
    code = collect(tmp_path, None)
    err = capsys.readouterr().err
    assert code == (status or 0)
    line = line.format(pid=fake_collect.meta["target_pid"])
    assert err.splitlines()[-1] == f"lockprof: {line}; recording written to {tmp_path / 'rec.lpr'}"
    assert profiler.load(tmp_path / "rec.lpr").meta["exit_status"] == status


def test_lockprofs_own_failure_comes_before_the_commands_status(
    capsys, tmp_path, fake_collect, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("no report")

    fake_collect.meta.update(exit_status=3, exit_signal=None)
    with monkeypatch.context() as patched:
        patched.setattr(report, "write_html", broken)
        assert collect(tmp_path, tmp_path / "rec.html") == 1
    assert collect(tmp_path, tmp_path / "rec.html") == 3


def test_the_summary_after_a_collection_prints_the_busiest_rows(
    capsys, tmp_path, fake_collect, monkeypatch
):
    """A long system-wide run has lock rows by the hundred thousand: the
    summary printed at the end shows FINAL_SUMMARY_TOP of them and says how
    many more there are; the recording and `show` have them all."""
    monkeypatch.setattr(common, "FINAL_SUMMARY_TOP", 3)
    code = collect(tmp_path, None, as_json=False)
    out = capsys.readouterr().out
    rows = len(summary.summary_json(fake_collect)["locks"])
    assert code == 0 and rows > 3
    assert f"({rows - 3} more rows; `lockprof show {tmp_path / 'rec.lpr'}` lists all)" in out
    code = main(["show", str(tmp_path / "rec.lpr")])
    assert code == 0 and "more rows" not in capsys.readouterr().out


def test_csv_files_are_private_like_the_recording(capsys, tmp_path, monkeypatch):
    """--csv DIR writes command lines (meta.json), comm names and kernel
    addresses: mode 0600, as recordings and reports, whatever the umask (the
    files were 0644 under a umask of 022). A file already there is made 0600 too."""
    directory = tmp_path / "csv"
    directory.mkdir()
    (directory / "meta.json").write_text("{}")
    (directory / "meta.json").chmod(0o644)
    old = os.umask(0o022)
    try:
        code, _out, _err = run_main(capsys, "export", HOSTILE, "--csv", directory)
    finally:
        os.umask(old)
    assert code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes


def test_csv_to_a_dash_is_refused(capsys, tmp_path, monkeypatch):
    """`export --csv -` wrote its tables into a directory named "-"."""
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_main(capsys, "export", HOSTILE, "--csv", "-")
    assert (
        one_error_line(code, err) == "lockprof: --csv takes a directory (one file a table), not -"
    )
    assert code == 2 and not (tmp_path / "-").exists()


@pytest.mark.parametrize("path", [".", "/"])
def test_report_of_a_directory_is_one_line(capsys, path):
    """`report .` was an internal error (the default output of '.')."""
    code, _out, err = run_main(capsys, "report", path)
    assert one_error_line(code, err) == f"lockprof: {path}: is a directory, not a recording"


def test_csv_export_that_fails_leaves_the_directory_as_it_was(capsys, tmp_path, monkeypatch):
    """A full disk in the middle of `export --csv DIR` left one export's
    tables beside another's: the tables are all written aside first."""
    out = tmp_path / "csv"
    code, _out, _err = run_main(capsys, "export", HOSTILE, "--csv", out)
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = outputs._write_new, []

    def full_disk_on_the_third(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "_write_new", full_disk_on_the_third)
    code, _out, err = run_main(capsys, "export", RECORDING, "--csv", out)
    assert one_error_line(code, err) == (
        f"lockprof: cannot write {out} (No space left on device); the files in it are as they were"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file either
