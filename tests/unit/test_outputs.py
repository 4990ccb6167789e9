"""Where outputs go and how they are written (profiler/outputs.py), for every
writer: recordings, run sets, HTML pages, folded stacks and CSV tables.

- a regular file (or a new name) is replaced through a temporary file and a
  rename, mode 0600;
- a symlink is followed: the file it names is written, the link stays;
- an existing character device or FIFO is written into: no temporary file,
  no rename, no chmod;
- a name ending in a directory ("out/") is refused before any work;
- a recording or a run set never replaces a file that is not one;
- under sudo, a file lockprof creates belongs to the user who ran sudo.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dashboards import page
from profiler import outputs, recording, runset
from profiler.cli import export
from profiler.errors import LockprofError

from .helpers import RECORDING, one_error_line, run_main

PAGE = "<!DOCTYPE html>\n<html><body>a page</body></html>\n"
NOBODY = 65534


# -- the writers, and what each should leave ------------------------------------------------


def _is_recording(data: bytes, tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-what-was-written.lpr"
    copy.write_bytes(data)
    recording.load(copy)
    copy.unlink()


def _is_run_set(data: bytes, tmp_path: Path) -> None:
    copy = tmp_path / "copy-of-what-was-written.lpset"
    copy.write_bytes(data)
    assert len(runset.load(copy).runs) == 1
    copy.unlink()


def _is_page(data: bytes, _tmp_path: Path) -> None:
    assert data == PAGE.encode()


def _is_folded(data: bytes, _tmp_path: Path) -> None:
    assert data and all(" " in line for line in data.decode().splitlines())


WRITERS: dict[str, tuple[Callable, Callable[[bytes, Path], None]]] = {
    "recording": (lambda rec, path: recording.save(rec, path), _is_recording),
    "run set": (
        lambda rec, path: runset.save(runset.from_recording(rec, label="x"), path),
        _is_run_set,
    ),
    "html": (lambda _rec, path: page.write_atomic(PAGE, path, "report"), _is_page),
    "folded": (lambda rec, path: export.write_folded(rec, Path(path)), _is_folded),
}


@pytest.fixture(params=list(WRITERS))
def writer(request, rec, tmp_path) -> Callable[[Path], bytes | None]:
    """write(path): writes with one of the writers and checks what a regular
    file at path then holds (returns its bytes); check(data) for bytes read
    elsewhere (a FIFO)."""
    write, check = WRITERS[request.param]

    class Writer:
        name = request.param

        def __call__(self, path: Path) -> None:
            write(rec, path)

        def check(self, data: bytes) -> None:
            check(data, tmp_path)

    return Writer()


def leftovers(directory: Path) -> list[str]:
    """Temporary files a write left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def device(path: Path) -> Path:
    """A character device node with /dev/null's numbers (1, 3)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    os.chmod(path, 0o666)
    return path


@contextlib.contextmanager
def fifo_reader(path: Path) -> Iterator[list[bytes]]:
    """A FIFO at path, open for reading (lockprof does not wait for a
    reader), and a thread that reads all written into it: the bytes are in
    the list once the block ends."""
    os.mkfifo(path, 0o644)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    received: list[bytes] = []

    def read() -> None:
        select.select([reader], [], [], 30)  # a writer came (before, a read says EOF)
        os.set_blocking(reader, True)
        with open(reader, "rb") as fifo:
            received.append(fifo.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    yield received
    thread.join(30)
    assert not thread.is_alive(), "nothing was written into the FIFO"


# -- a regular file -----------------------------------------------------------------------


def test_a_regular_file_is_replaced_through_a_rename_mode_0600(writer, tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"")
    path.chmod(0o644)
    before = path.stat().st_ino
    writer(path)
    assert path.stat().st_ino != before  # a new file renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    writer.check(path.read_bytes())
    assert leftovers(tmp_path) == []


def test_a_new_name_is_created_mode_0600(writer, tmp_path):
    old = os.umask(0o022)
    try:
        writer(tmp_path / "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    writer.check((tmp_path / "new").read_bytes())
    assert leftovers(tmp_path) == []


def test_a_name_lockprof_chose_never_replaces_a_file(tmp_path):
    """Two collections started in the same second chose the same default
    name: the second's rename replaced the first's recording."""
    first = outputs.ChosenName(tmp_path / "lockprof-system-all-20261128-184246.lpr")
    recording.save(recording.load(RECORDING), first)
    written = recording.save(recording.load(RECORDING), first)
    third = recording.save(recording.load(RECORDING), first)
    assert Path(first).is_file()
    assert written == tmp_path / "lockprof-system-all-20261128-184246-2.lpr"
    assert third == tmp_path / "lockprof-system-all-20261128-184246-3.lpr"
    for path in (first, written, third):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
        assert recording.load(path).meta == recording.load(RECORDING).meta
    assert leftovers(tmp_path) == []


def test_a_chosen_name_that_fails_leaves_no_claim(tmp_path):
    def fail(_out):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        outputs.write_file(outputs.ChosenName(tmp_path / "x.lpr"), fail)
    assert list(tmp_path.iterdir()) == []


# -- symlinks -----------------------------------------------------------------------------


def test_a_symlink_is_followed_and_stays(writer, tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target"
    target.write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(Path("real") / "target")  # relative, into another directory
    writer(link)
    assert link.is_symlink() and os.readlink(link) == "real/target"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    writer.check(target.read_bytes())
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "real") == []


def test_a_dangling_symlink_creates_the_file_it_names(writer, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    writer(link)
    assert link.is_symlink()
    assert stat.S_IMODE((tmp_path / "target").stat().st_mode) == 0o600
    writer.check((tmp_path / "target").read_bytes())


def test_a_failed_write_through_a_dangling_symlink_leaves_it_dangling(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")

    def broken(out):
        out.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        outputs.write_file(link, broken)
    assert link.is_symlink() and not (tmp_path / "target").exists()
    assert leftovers(tmp_path) == []


# -- devices and FIFOs --------------------------------------------------------------------


def test_a_character_device_is_written_into_not_replaced(writer, tmp_path):
    """/dev/null seeks and says its position is always 0: a recording's ZIP
    writer must not believe it (its offsets did not fit: struct.error)."""
    null = device(tmp_path / "nulldev")
    writer(null)
    after = null.lstat()
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(after.st_mode) == 0o666  # no chmod
    assert leftovers(tmp_path) == []


def test_a_symlink_to_a_device_writes_into_the_device(writer, tmp_path):
    null = device(tmp_path / "nulldev")
    link = tmp_path / "stdout"
    link.symlink_to(null)
    writer(link)
    assert link.is_symlink() and stat.S_ISCHR(null.lstat().st_mode)


def test_a_fifo_is_written_into_not_replaced(writer, tmp_path):
    fifo = tmp_path / "pipe"
    with fifo_reader(fifo) as received:
        writer(fifo)
    after = fifo.lstat()
    assert stat.S_ISFIFO(after.st_mode) and stat.S_IMODE(after.st_mode) == 0o644
    writer.check(received[0])
    assert leftovers(tmp_path) == []


def test_a_recording_into_a_fifo_whose_reader_left_is_rescued(rec, tmp_path, monkeypatch):
    """A write into a device or FIFO that fails is a failed write like any
    other: the recording is kept in a rescue file."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # the recording (40 KiB) cannot fit

    def leave_once_written_into() -> None:
        select.select([reader], [], [], 30)
        os.close(reader)

    leaver = threading.Thread(target=leave_once_written_into, daemon=True)
    leaver.start()
    with pytest.raises(LockprofError) as excinfo:
        recording.save(rec, fifo)
    leaver.join(10)
    message = str(excinfo.value)
    assert message.startswith(f"cannot write recording to {fifo} (Broken pipe); data kept in ")
    rescue = re.search(r"data kept in (\S+)$", message).group(1)
    recording.load(rescue)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_fifo_that_no_process_reads_is_an_error_not_a_wait(rec, tmp_path, monkeypatch):
    """lockprof ignores signals while it writes a recording: waiting for a
    reader that never comes would hang it for good."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(LockprofError) as excinfo:
        recording.save(rec, fifo)
    message = str(excinfo.value)
    assert message.startswith(
        f"cannot write recording to {fifo} (no process reads from this FIFO); data kept in "
    )
    recording.load(re.search(r"data kept in (\S+)$", message).group(1))
    with pytest.raises(LockprofError, match=r"\(no process reads from this FIFO\)$"):
        page.write_atomic(PAGE, fifo, "report")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and leftovers(tmp_path) == []


# -- the checks before any work ----------------------------------------------------------


def test_checks_let_a_device_through_without_a_trial_file(tmp_path):
    null = device(tmp_path / "nulldev")
    assert outputs.check_directory(null) is None
    outputs.check_writable(null)
    assert leftovers(tmp_path) == []


def test_checks_look_where_a_symlink_leads(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "r.lpr")
    with pytest.raises(LockprofError, match=f"output directory {tmp_path / 'gone'} does not"):
        outputs.check_writable(link)
    (tmp_path / "gone").mkdir()
    assert outputs.check_directory(link) == tmp_path / "gone"
    assert outputs.check_directory(tmp_path / "new.lpr") == tmp_path


# -- from the command line ----------------------------------------------------------------


def test_report_into_a_device_a_fifo_and_through_a_symlink(capsys, tmp_path):
    null = device(tmp_path / "nulldev")
    code, _out, err = run_main(capsys, "report", RECORDING, "-o", null)
    assert code == 0, err
    assert stat.S_ISCHR(null.lstat().st_mode)
    target = tmp_path / "target.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target.name)
    code, _out, err = run_main(capsys, "report", RECORDING, "-o", link)
    assert code == 0, err
    assert link.is_symlink() and target.read_text().startswith("<!DOCTYPE html>")
    fifo = tmp_path / "pipe.html"
    with fifo_reader(fifo) as received:
        code, _out, err = run_main(capsys, "report", RECORDING, "-o", fifo)
    assert code == 0, err
    assert received[0].startswith(b"<!DOCTYPE html>") and stat.S_ISFIFO(fifo.lstat().st_mode)
    assert leftovers(tmp_path) == []


def test_a_collection_writes_its_recording_and_report_into_devices(capsys, tmp_path, monkeypatch):
    """run -o nulldev --html nulldev2 (collection replaced by a recording)."""
    from profiler import session
    from profiler.cli import common
    from profiler.session import CollectOptions

    from .test_export import FakeTarget

    monkeypatch.setattr(session, "collect", lambda *args, **kwargs: recording.load(RECORDING))
    null, null2 = device(tmp_path / "nulldev"), device(tmp_path / "nulldev2")
    code = common.run_collection(
        FakeTarget(),  # type: ignore[arg-type]
        CollectOptions(families=("mmap_lock", "contention")),
        null,
        top=5,
        quiet=True,
        as_json=True,
        working=set(),
        html=null2,
    )
    assert code == 0, capsys.readouterr().err
    assert stat.S_ISCHR(null.lstat().st_mode) and stat.S_ISCHR(null2.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nulldev", "nulldev2"]


# -- under sudo ---------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def under_sudo(monkeypatch):
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    monkeypatch.setenv("SUDO_GID", str(NOBODY))


def owner(path: Path) -> tuple[int, int]:
    found = path.lstat()
    return found.st_uid, found.st_gid


@needs_root
def test_under_sudo_a_new_file_belongs_to_the_user_who_ran_sudo(writer, tmp_path, under_sudo):
    for path in (tmp_path / "new", tmp_path / "new"):  # created, then replaced
        writer(path)
        assert owner(path) == (NOBODY, NOBODY)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@needs_root
def test_under_sudo_a_device_written_into_keeps_its_owner(writer, tmp_path, under_sudo):
    null = device(tmp_path / "nulldev")
    writer(null)
    assert owner(null) == (0, 0)


@needs_root
def test_under_sudo_the_rescue_copy_belongs_to_the_user(rec, tmp_path, monkeypatch, under_sudo):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for save, suffix in (
        (recording.save, ".lpr"),
        (lambda rec, path: runset.save(runset.from_recording(rec, label="x"), path), ".lpset"),
    ):
        with pytest.raises(LockprofError) as excinfo:
            save(rec, tmp_path / "missing" / f"r{suffix}")
        rescue = Path(re.search(r"data kept in (\S+)$", str(excinfo.value)).group(1))
        assert rescue.parent == tmp_path and rescue.name.endswith(suffix)
        assert owner(rescue) == (NOBODY, NOBODY)
        assert stat.S_IMODE(rescue.stat().st_mode) == 0o600


@needs_root
def test_under_sudo_csv_files_and_the_directories_made_for_them(capsys, tmp_path, under_sudo):
    existing = tmp_path / "existing"
    existing.mkdir()
    target = existing / "made" / "csv"
    code, _out, err = run_main(capsys, "export", RECORDING, "--csv", target)
    assert code == 0, err
    assert owner(existing) == (0, 0)
    assert owner(existing / "made") == owner(target) == (NOBODY, NOBODY)
    files = list(target.iterdir())
    assert files and {owner(p) for p in files} == {(NOBODY, NOBODY)}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


@needs_root
@pytest.mark.parametrize(
    ("uid", "gid"),
    [("abc", "1"), ("-1", "1"), ("1_000", "1"), (" 1", "1"), ("1", ""), ("4294967295", "1")],
)
def test_under_sudo_ids_that_are_not_valid_are_ignored(tmp_path, monkeypatch, uid, gid):
    monkeypatch.setenv("SUDO_UID", uid)
    monkeypatch.setenv("SUDO_GID", gid)
    assert outputs.invoking_user() is None
    page.write_atomic(PAGE, tmp_path / "p.html")
    assert owner(tmp_path / "p.html") == (0, 0)


def test_without_root_nothing_is_given_away(monkeypatch, under_sudo):
    monkeypatch.setattr(outputs.os, "geteuid", lambda: 1000)
    assert outputs.invoking_user() is None
    monkeypatch.setattr(outputs.os, "geteuid", lambda: 0)
    assert outputs.invoking_user() == (NOBODY, NOBODY)
    monkeypatch.delenv("SUDO_GID")
    assert outputs.invoking_user() is None


# -- refusals, before any work (status 2) -------------------------------------------------


def test_names_that_end_in_a_directory():
    for name in ("out/", "a/b/", "out/.", "out/..", ".", "..", "/"):
        assert outputs.names_a_directory(name), name
    for name in ("out", "a/b", "-", "", "out.", "..out", "./out"):
        assert not outputs.names_a_directory(name), name


@pytest.fixture
def never_collect(monkeypatch):
    """A collecting command that gets past the output checks stops at its
    privilege check: a regression fails the test, never starts a collection."""
    from profiler import privileges

    def refuse(*_args, **_kwargs):
        raise LockprofError("test: reached the privilege check")

    monkeypatch.setattr(privileges, "require", refuse)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", RECORDING, "-o", "{d}/newdir/"],
        ["report", RECORDING, "-o", "{d}/newdir/."],
        ["compare", RECORDING, RECORDING, "-o", "{d}/newdir/"],
        ["export", RECORDING, "--folded", "{d}/newdir/"],
        ["bench", "--runs", "1", "-o", "{d}/newdir/", "--", "true"],
    ],
)
def test_a_name_that_ends_in_a_directory_is_refused(capsys, tmp_path, argv, never_collect):
    argv = [str(a).format(d=tmp_path) for a in argv]
    code, out, err = run_main(capsys, *argv)
    line = one_error_line(code, err)
    assert code == 2 and out == ""
    assert f"{tmp_path}/newdir/" in line and "names a directory; give a file name" in line
    assert list(tmp_path.iterdir()) == []  # no file named newdir


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-q", "-o", "{d}/newdir/", "--", "true"],
        ["run", "-q", "--html", "{d}/newdir/", "--", "true"],
        ["record", "-a", "-o", "{d}/newdir/."],
    ],
)
def test_a_collection_output_that_ends_in_a_directory_is_refused(
    capsys, tmp_path, argv, never_collect
):
    argv = [str(a).format(d=tmp_path) for a in argv]
    code, out, err = run_main(capsys, *argv)
    line = one_error_line(code, err)
    assert code == 2 and out == ""
    assert "names a directory; give a file name" in line


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["run", "-q", "-o", "{notes}", "--", "true"], "recording"),
        (["record", "-a", "-o", "{notes}"], "recording"),
        (["bench", "--runs", "1", "-o", "{notes}", "--", "true"], "run set"),
    ],
)
def test_a_recording_or_run_set_never_replaces_another_file(
    capsys, tmp_path, argv, kind, never_collect
):
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    for name in (notes, tmp_path / "link"):
        if name != notes:
            name.symlink_to(notes)
        code, out, err = run_main(capsys, *[a.format(notes=name) for a in argv])
        line = one_error_line(code, err)
        assert code == 2 and out == ""
        assert line == (
            f"lockprof: -o {name} is an existing file that is not a lockprof {kind}; "
            f"writing {'the recording' if kind == 'recording' else 'a run set'} there would "
            "destroy it (choose another file)"
        )
        assert notes.read_text() == "notes\n"


def test_what_a_recording_may_be_written_over(tmp_path):
    """An empty file (mktemp's, or a shell's `> file` behind -o /dev/stdout),
    a device, a FIFO and a recording: yes. A block device: no."""
    empty = tmp_path / "empty.lpr"
    empty.write_bytes(b"")
    null = device(tmp_path / "nulldev")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (empty, null, fifo, RECORDING, tmp_path / "new.lpr"):
        outputs.refuse_clobbering(path, [], "-o", "the recording", kind=outputs.RECORDING)
    block = tmp_path / "disk"
    try:
        os.mknod(block, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    except PermissionError:
        return
    with pytest.raises(LockprofError, match="is a block device") as excinfo:
        outputs.refuse_clobbering(block, [], "--html", "the HTML report")
    assert excinfo.value.exit_code == 2


def test_a_page_or_a_table_may_replace_a_file_as_a_shell_would(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    outputs.refuse_clobbering(notes, [], "--html", "the HTML report")
    code, _out, _err = run_main(capsys, "export", RECORDING, "--folded", notes)
    assert code == 0 and notes.read_text() != "notes\n"
    assert stat.S_IMODE(notes.stat().st_mode) == 0o600


def test_a_dash_is_stdout_but_not_a_terminal(monkeypatch):
    """`-o -` made a file named "-"; it is stdout now, as /dev/stdout, and
    refused (a usage error) when stdout is a terminal."""
    import click

    from profiler import outputs

    monkeypatch.setattr(outputs.os, "isatty", lambda fd: False)
    assert outputs.OutputFile(dir_okay=False).convert("-", None, None) == Path("/dev/stdout")
    monkeypatch.setattr(outputs.os, "isatty", lambda fd: fd == 1)
    with pytest.raises(click.BadParameter, match="- is stdout, a terminal here"):
        outputs.OutputFile(dir_okay=False).convert("-", None, None)


def test_a_command_whose_report_is_on_stdout_refuses_a_dash():
    """`compare -o -` wrote its page after its text report on stdout;
    `bench -o -` its run set before its table."""
    import click

    from profiler import outputs

    with pytest.raises(click.BadParameter, match="carries this command's report"):
        outputs.OutputFile(stdout_dash=False).convert("-", None, None)
