"""Where lockprof's output files go, and how every one of them is written.

The checks run before collection starts (light: no pandas, so that they run
before the probes are compiled, cli/common.py). write_file() writes every
output (recordings, run sets, HTML pages, exports) and write_rescue() the
copy kept when that failed:

- a regular file, or a name not taken yet: a temporary file (mode 0600) in
  the same directory, renamed over it, so that the file is whole or absent;
- a symbolic link is followed (the file it names is written, the link
  stays), as far as the kernel lets this process follow it
  (fs.protected_symlinks);
- a name lockprof chose itself (ChosenName: a collection's default output)
  never replaces a file: one taken by then (another lockprof that started
  in the same second) gets -2, -3, ... before its suffix;
- an existing character device or FIFO (/dev/null, /dev/stdout on a
  terminal or a pipe, a named pipe) is written into directly, as a shell's
  `>` would: no temporary file, no rename, no chmod;
- under sudo (running as root with SUDO_UID and SUDO_GID set), a file
  lockprof creates belongs to the user who ran sudo, so that `show`,
  `report`, `compare` and `export` read it without privilege.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

import click

from profiler.errors import LockprofError

# A recording with empty tables takes about 40 KiB: refuse to start with
# less free space than this where the recording goes.
MIN_FREE_BYTES = 1 << 20


# -- names ----------------------------------------------------------------------------


class ChosenName(type(Path())):  # type: ignore[misc]
    """An output name lockprof chose (no -o): written as a new file, never
    over another (write_file's claim_new_name)."""


def claim_new_name(path: Path) -> Path:
    """path, or path-2, path-3, ... (before the suffix): the first name not
    taken, created empty (0600) so that no other process takes it before
    the rename that fills it."""
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free name", str(path))


def names_a_directory(name: str) -> bool:
    """Does name, as typed, end in a directory ("out/", "out/.", "..")?
    pathlib drops a trailing slash and a trailing "." (Path("out/") is
    Path("out")), so that such a name would write a file named out."""
    return bool(name) and name != "-" and os.path.basename(name) in ("", ".", "..")


class OutputFile(click.Path):
    """click.Path (path_type Path unless given) for a file lockprof writes:
    a name that ends in a directory (names_a_directory) is refused as the
    command line is parsed, before any work (a usage error: one line, exit
    2). `-` is stdout (it made a file named "-"), as /dev/stdout, but not a
    terminal: a recording or a page is bytes for a pipe or a file. With
    allow_dash (click's), the command takes `-` itself (export's text);
    without stdout_dash, `-` is refused (a command whose own report is on
    stdout: bench, compare)."""

    def __init__(self, stdout_dash: bool = True, **options) -> None:
        options.setdefault("path_type", Path)
        super().__init__(**options)
        self.stdout_dash = stdout_dash

    def convert(self, value, param, ctx):
        if value in STDOUT_NAMES and not (value == "-" and self.allow_dash):
            if not self.stdout_dash:
                self.fail(
                    f"{value} (stdout) carries this command's report; give a file", param, ctx
                )
            if os.isatty(1):
                self.fail(
                    f"{value} is stdout, a terminal here: redirect it, or give a file", param, ctx
                )
            value = STDOUT_NAMES[0]
        if isinstance(value, str) and names_a_directory(value):
            self.fail(f"{value} names a directory; give a file name", param, ctx)
        return super().convert(value, param, ctx)


# The names of lockprof's own stdout (`-` becomes the first).
STDOUT_NAMES = ("/dev/stdout", "-", "/dev/fd/1", "/proc/self/fd/1")


def is_our_stdout(path: str | Path | None) -> bool:
    """Does path name lockprof's stdout (`-o -`, `-o /dev/stdout`)? By
    name: a file that stdout happens to be too (`-o /dev/null >
    /dev/null`) is another output."""
    return path is not None and str(path) in STDOUT_NAMES


# -- where the bytes go -----------------------------------------------------------------


class _Destination(NamedTuple):
    path: Path  # the file written into (direct), or the name renamed over
    direct: bool  # an existing device or FIFO: written into, no temporary file
    made: bool  # created just now at a dangling symlink's target: removed on failure


def _fd_path(fd: int) -> str | None:
    """The name of the file open at fd (from /proc), or None where no name
    leads to it: deleted, in another mount namespace, no /proc."""
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
        opened, named = os.fstat(fd), os.stat(name)
    except OSError:
        return None
    if not name.startswith("/") or (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        return None
    return name


def _destination(path: Path, create: bool) -> _Destination:
    """Where path's bytes go. Symbolic links are followed as opening path
    would follow them (the kernel's fs.protected_symlinks applies). A
    dangling link names a file to create: with create, it is created (0600)
    through the link so that its name is known; without (the checks), it
    is only named. OSError as opening path would fail (IsADirectoryError
    for a directory)."""
    if is_our_stdout(path):
        # Into lockprof's own fd 1, whatever it is: a file under `>>` keeps
        # what it had (/dev/stdout, reopened, named the file itself, which
        # was then replaced by a temporary file's rename).
        return _Destination(Path(STDOUT_NAMES[0]), direct=True, made=False)
    made = False
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.islink(path):
            return _Destination(path, direct=False, made=False)  # a new name
        if not create:
            return _Destination(Path(os.path.realpath(path)), direct=False, made=False)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        made = True
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        name = _fd_path(fd) if stat.S_ISREG(mode) else None
    finally:
        os.close(fd)
    if name is None:  # a device, a FIFO (or a file no name leads to): written into
        return _Destination(path, direct=True, made=False)
    return _Destination(Path(name), direct=False, made=made)


def check_directory(path: str | Path, what: str = "output") -> Path | None:
    """Fail if path could not be written: it is a directory, its directory
    is missing or not writable, or it is a device or FIFO that is not
    writable (what: named in the error). Returns the directory where the
    file will be created, or None where an existing device or FIFO is
    written into. The report and comparison pages check this much;
    check_writable() adds a trial file and the free space."""
    path = Path(path)
    try:
        where = _destination(path, create=False)
    except IsADirectoryError:
        raise LockprofError(f"{what} path {path} is a directory") from None
    except OSError as exc:  # a parent directory this user may not enter, a link loop
        raise LockprofError(f"cannot use {what} path {path} ({exc.strerror})") from None
    if where.direct:
        if not os.access(where.path, os.W_OK):
            raise LockprofError(f"{what} path {path} is not writable")
        return None
    directory = where.path.parent
    try:
        directory_exists = directory.is_dir()
    except OSError as exc:
        raise LockprofError(f"cannot use {what} path {path} ({exc.strerror})") from None
    if not directory_exists:
        if directory.exists():  # -o /etc/passwd/x.lpr
            raise LockprofError(f"{what} path {path}: {directory} is not a directory")
        raise LockprofError(f"{what} directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise LockprofError(f"{what} directory {directory} is not writable")
    return directory


def check_writable(path: str | Path) -> None:
    """Fail before collection if the recording could not be written: no
    such directory, not writable (permissions, a read-only mount), or a
    file system with less than MIN_FREE_BYTES free. (It can still fill up
    during collection: save() then keeps a temporary copy.) A device or
    FIFO written into needs neither."""
    path = Path(path)
    directory = check_directory(path)
    if directory is None:
        return
    try:  # what access() cannot see: ACLs, root on NFS, a full inode table
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=directory):
            pass
        fs = os.statvfs(directory)
    except OSError as exc:
        # "not writable (No such file or directory)" read oddly for /proc:
        # say what failed, and the kernel's reason.
        raise LockprofError(
            f"cannot create a file in output directory {directory} ({exc.strerror})"
        ) from None
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise LockprofError(
            f"output directory {directory} has {free // 1024} KiB free; a recording "
            f"needs at least {MIN_FREE_BYTES // 1024} KiB"
        )


# -- writing ------------------------------------------------------------------------------

_ID = re.compile(r"[0-9]{1,10}")


def invoking_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran `sudo lockprof`: when this process is
    root and SUDO_UID and SUDO_GID are both decimal ids; else None."""
    if os.geteuid() != 0:
        return None
    values = [os.environ.get(name, "") for name in ("SUDO_UID", "SUDO_GID")]
    if not all(_ID.fullmatch(value) for value in values):
        return None
    uid, gid = (int(value) for value in values)
    if max(uid, gid) >= 0xFFFFFFFF:  # (uid_t)-1 means "leave as it is"
        return None
    return uid, gid


def _give_to_invoking_user(fd: int) -> None:
    """Under sudo, a file lockprof created belongs to the user who ran sudo
    (it stays 0600): `show`, `report`, `compare` and `export` need no
    privilege. Where the file system cannot (vfat, root squashed on NFS),
    the file is kept as it is."""
    owner = invoking_user()
    if owner is not None:
        with contextlib.suppress(OSError):
            os.fchown(fd, *owner)


def _write_new(
    directory: Path, prefix: str, write: Callable[[BinaryIO], object], suffix: str = ""
) -> str:
    """write() into a new private file (mkstemp: prefix, suffix) in directory,
    synced to disk: its name. Removed again on any failure."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o600)  # mkstemp's mode, whatever the umask
            _give_to_invoking_user(fd)
            write(out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return name


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _open_into(path: Path) -> int:
    """An existing device or FIFO opened for writing into. A FIFO that no
    process reads is an error at once (a shell's > would wait for a reader,
    and lockprof, which ignores signals while it writes a recording, would
    wait forever). lockprof's stdout is its fd 1 itself, where it is."""
    if is_our_stdout(path):
        return os.dup(1)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):
            raise OSError(errno.ENXIO, "no process reads from this FIFO", str(path)) from None
        raise
    os.set_blocking(fd, True)  # a reader that is slower than lockprof is waited for
    return fd


class _ForwardOnly(io.RawIOBase):
    """A device or FIFO written into, as a stream that cannot seek, whose
    position is the count of bytes written. /dev/null seeks, and its
    position is always 0: a ZIP writer that believed it wrote offsets that
    do not fit its records. Told that it cannot seek, it writes each
    member's sizes after the member, as into a pipe."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out = out
        self._written = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._written

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self._out.write(data)
        self._written += size
        return size

    def flush(self) -> None:
        self._out.flush()


def write_file(
    path: str | Path,
    write: Callable[[BinaryIO], object],
    before_rename: Callable[[], None] | None = None,
) -> Path:
    """Write what write() writes to path, the one way lockprof writes an
    output (the module's docstring): a regular file or a new name through a
    temporary file renamed into place (mode 0600, the invoking user's under
    sudo; before_rename() runs just before the rename), a symlink followed,
    an existing device or FIFO written into; a ChosenName as a new file
    (claim_new_name). Returns the file written. OSError on failure, leaving
    no temporary file."""
    chosen = isinstance(path, ChosenName)
    path = Path(path)
    # A name lockprof chose is neither followed nor replaced: the file it
    # names is claimed new at the rename.
    where = _Destination(path, False, False) if chosen else _destination(path, create=True)
    if where.direct:
        with os.fdopen(_open_into(where.path), "wb") as out:
            write(cast(BinaryIO, _ForwardOnly(out)))
        return where.path
    final = where.path
    try:
        tmp = _write_new(where.path.parent, f".{where.path.name}.", write)
        claimed = None
        try:
            if before_rename is not None:
                before_rename()
            if chosen:
                final = claimed = claim_new_name(where.path)
            os.replace(tmp, final)
        except BaseException:
            for name in (tmp, claimed):
                if name is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
            raise
    except BaseException:
        if where.made:
            with contextlib.suppress(OSError):
                os.unlink(where.path)
        raise
    return final


def write_files(items: Sequence[tuple[Path, Callable[[BinaryIO], object]]]) -> list[Path]:
    """write_file() of files that belong together (export --csv's tables):
    each regular file is written to a temporary file first, and only once
    all are whole are they renamed into place. A failure (a full disk)
    leaves the files as they were: it left one export's tables beside
    another's. Devices and FIFOs are written into last. OSError on failure."""
    staged: list[tuple[str, Path]] = []
    direct = []
    try:
        for path, write in items:
            where = _destination(Path(path), create=True)
            if where.direct:
                direct.append((path, write))
                continue
            staged.append(
                (_write_new(where.path.parent, f".{where.path.name}.", write), where.path)
            )
        renamed = []
        while staged:
            tmp, final = staged[0]
            os.replace(tmp, final)
            renamed.append(final)
            staged.pop(0)
    finally:
        for tmp, _final in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return renamed + [write_file(path, write) for path, write in direct]


def write_or_rescue(
    path: Path,
    write: Callable[[BinaryIO], object],
    what: str,
    suffix: str,
    before_rename: Callable[[], None] | None = None,
) -> Path:
    """write_file(path, write): the file written. If that fails (a full
    disk, the directory gone), write_rescue() keeps the data and the error
    names where, or says it is lost (what: "recording", "run set")."""
    try:
        return write_file(path, write, before_rename=before_rename)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        rescue, failures = write_rescue(write, suffix)
        if rescue is None:
            raise LockprofError(
                f"cannot write {what} to {path} ({reason}), nor a temporary copy "
                f"({'; '.join(failures)}): the {what} is lost"
            ) from None
        raise LockprofError(
            f"cannot write {what} to {path} ({reason}); data kept in {rescue}"
        ) from None


def write_rescue(write: Callable[[BinaryIO], object], suffix: str) -> tuple[str | None, list[str]]:
    """Keep what write() writes (an output that could not be written where
    asked) in a new 0600 file, lockprof-*<suffix>, in the temporary
    directory, else in the home directory: (its path, why each directory
    before failed), or (None, why each failed)."""
    failures: list[str] = []
    for directory in (tempfile.gettempdir(), os.path.expanduser("~")):
        try:
            return _write_new(Path(directory), "lockprof-", write, suffix), failures
        except OSError as exc:
            failures.append(f"{directory}: {exc.strerror or type(exc).__name__}")
    return None, failures


def make_directory(path: str | Path) -> None:
    """mkdir -p path. Under sudo, each directory it creates belongs to the
    user who ran sudo, as the files written into it. OSError as mkdir."""
    made = []
    path = Path(path)
    for directory in (*reversed(path.parents), path):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        made.append(directory)
    owner = invoking_user()
    if owner is None:
        return
    for directory in made:
        with contextlib.suppress(OSError):
            os.chown(directory, *owner, follow_symlinks=False)


# What a lockprof file holds, by the member only it has (runs/NNN.lpr inside
# a run set are not top-level members, so a set is never taken for a recording).
RECORDING, RUN_SET = "recording", "run set"
_KIND_MEMBER = {"meta.json": RECORDING, "manifest.json": RUN_SET}


def lockprof_kind(path: str | Path) -> str | None:
    """RECORDING or RUN_SET when path is an existing lockprof file, else None
    (zipfile only: this runs before the probes are compiled). A file cut
    short (an interrupted copy: no ZIP directory at its end) is one too, by
    the member its first local header names: `report sys.lpr -o cut.lpr`
    replaced a truncated recording whose members were nearly all whole."""
    try:
        if not Path(path).is_file():
            return None
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, RuntimeError):
        names = set()
    first = first_member(Path(path))
    if first == "manifest.json" or not names:
        # A run set whole or cut short (zipfile then finds its last run's
        # directory), or a file whose ZIP directory is gone.
        return _KIND_MEMBER.get(first or "")
    return next((kind for member, kind in _KIND_MEMBER.items() if member in names), None)


def first_member(path: Path) -> str | None:
    """The name in a ZIP file's first local header, or None (not a ZIP):
    lockprof's writers put meta.json (a recording) or manifest.json (a run
    set) first, so it tells a damaged or truncated one apart."""
    try:
        with path.open("rb") as stream:
            head = stream.read(30 + 64)
    except OSError:
        return None
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + length].decode("utf-8", errors="replace")


def truncated_note(path: Path, exc: Exception) -> str | None:
    """Why a ZIP that does not open is a damaged lockprof file, if it is
    one (None: not lockprof's, or no more than zipfile's reason to say)."""
    kind = _KIND_MEMBER.get(first_member(path) or "")
    if kind is None or not isinstance(exc, zipfile.BadZipFile):
        return None
    return (
        f"{path}: truncated or damaged lockprof {kind}: it starts as one, but the ZIP "
        "directory at its end is missing or unreadable (a copy cut short?)"
    )


def same_file(a: str | Path, b: str | Path) -> bool:
    """Do a and b name one file: the same inode (hard links, symlinks), or,
    where one does not exist yet, the same resolved path?"""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_clobbering(
    output: str | Path,
    inputs: Iterable[str | Path],
    flag: str,
    writes: str,
    kind: str | None = None,
) -> None:
    """Refuse, before any work, an output that would destroy recorded data:
    one of the inputs (the same file, however named), an existing recording
    or run set that what is written (writes; of kind RECORDING, RUN_SET or
    None) is not, or, for a recording or a run set, any other file that is
    not empty (a page or a table may replace a file, as a shell's > would).
    A recording may replace a recording and a run set a run set: an
    explicit -o asks for it. A block device or a socket is refused too; a
    character device or a FIFO is written into. flag: how the user named
    the output (-o, --html, ...). Exit 2: the command line is at fault."""
    if is_our_stdout(output):
        return  # written into where it stands, as a shell's redirection asked
    for source in inputs:
        if Path(source).exists() and same_file(output, source):
            what = "the input" if str(source) == str(output) else f"the input {source}"
            raise LockprofError(
                f"{flag} {output} is {what}; writing {writes} there would destroy it",
                exit_code=2,
            )
    existing = lockprof_kind(output)
    if existing is not None and existing != kind:
        raise LockprofError(
            f"{flag} {output} is a lockprof {existing}; writing {writes} there would "
            "destroy it (choose another file)",
            exit_code=2,
        )
    try:
        found = os.stat(output)  # through symlinks: what would be written
    except OSError:
        return  # a new name (or one that check_directory() explains)
    mode = found.st_mode
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        what = "a block device" if stat.S_ISBLK(mode) else "a socket"
        raise LockprofError(
            f"{flag} {output} is {what}, not a file lockprof writes {writes} to (choose a file)",
            exit_code=2,
        )
    if kind is not None and existing is None and stat.S_ISREG(mode) and found.st_size > 0:
        raise LockprofError(
            f"{flag} {output} is an existing file that is not a lockprof {kind}; writing "
            f"{writes} there would destroy it (choose another file)",
            exit_code=2,
        )
