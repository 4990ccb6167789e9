"""Integration tests: real eBPF on this kernel, against workloads with known
lock counts. They skip, with doctor's own reason, where a mechanism is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "workloads" / "bin"
LOCKPROF = [sys.executable, "-m", "profiler.cli.main"]

# lockprof keeps SIGHUP ignored when it starts ignored (under nohup: by
# design, see profiler/signals.py), and an ignored signal stays ignored in
# every child. The tests send SIGHUP to lockprof and expect it to end the
# collection, so the suite gives its children the default disposition even
# when it was itself started under nohup.
signal.signal(signal.SIGHUP, signal.SIG_DFL)

# The compiled-probe cache (profiler/probecache.py): the suite's own, empty
# at its start, so that each set of probe flags is compiled once for real
# and then read from the cache, whatever earlier runs (or a
# LOCKPROF_CACHE_DIR of the user's) hold; and the test hooks' entries stay
# out of them.
_SUITE_CACHE = tempfile.mkdtemp(prefix="lockprof-suite-cache-")
os.environ["LOCKPROF_CACHE_DIR"] = _SUITE_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SUITE_CACHE, ignore_errors=True)


def _doctor_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    from profiler import doctor

    failed = [c for c in doctor.cached_checks() if c.required and not c.ok]
    if failed:
        return "doctor: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "integration" not in str(item.fspath):
            continue
        if reason is None:
            reason = _doctor_skip_reason() or ""
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def workloads_built():
    subprocess.run(["make", "-s", "-C", str(REPO / "workloads")], check=True)


class Lockprof:
    """A lockprof process started in the background, ready once attached."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [*LOCKPROF, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[str] = []

    def wait_attached(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            if "attached" in line:
                return
        self.proc.kill()
        raise AssertionError(f"lockprof did not attach: {''.join(self.stderr_lines)}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, "".join(self.stderr_lines) + err

    def wait(self, timeout: float = 60.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, "".join(self.stderr_lines) + err


class Held:
    """mmapcount -w: a process that does its exact work only when told."""

    def __init__(self, pairs: int, threads: int = 1):
        self.proc = subprocess.Popen(
            [str(BIN / "mmapcount"), "-w", "-n", str(pairs), "-t", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("ready "), line
        self.pid = self.proc.pid

    def go_and_wait_done(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"g")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"done\n"

    def finish(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture
def lockprof_factory(tmp_path):
    started: list[Lockprof] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Lockprof:
        lp = Lockprof(list(args), tmp_path, env)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        if lp.proc.poll() is None:
            lp.proc.kill()
            lp.proc.wait()


def attach_to_held(
    lockprof_factory, pairs: int, name: str, *flags: str, threads: int = 1, env=None
) -> int:
    """`attach -p` (with flags, recording to name) to a held mmapcount while
    it does its pairs, then Ctrl-C; the target's pid. The run must end well."""
    target = Held(pairs, threads)
    try:
        args = ("attach", "-p", str(target.pid), *flags, "-o", name, "-q")
        lp = lockprof_factory(*args, env=env)
        lp.wait_attached()
        time.sleep(0.3)  # let the first poll of /proc/PID pass
        target.go_and_wait_done()
        code, _out, err = lp.stop()
    finally:
        target.finish()
    assert code == 0, err
    assert "Traceback" not in err
    return target.pid


def show_json(path: Path) -> dict:
    out = subprocess.run(
        [*LOCKPROF, "show", "--json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def rows_for(summary: dict, pid: int, comm: str | None = None) -> dict[str, dict]:
    """This pid's mmap_lock rows by mode. Under `run`, the pid also owned the
    pre-exec copy of lockprof's mm for a moment: pass comm to pick the command's."""
    return {
        r["mode"]: r
        for r in summary["locks"]
        if r["owner_pid"] == pid
        and r["lock_class"] == "mmap_lock"
        and (comm is None or r["owner_comm"] == comm)
    }


def _prog_holders() -> dict[int, set[int]]:
    """prog id -> pids holding an fd to it (from /proc/PID/fdinfo)."""
    holders: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fdinfos = list((proc / "fdinfo").iterdir())
        except OSError:
            continue
        for fdinfo in fdinfos:
            try:
                text = fdinfo.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("prog_id:"):
                    holders.setdefault(int(line.split()[1]), set()).add(int(proc.name))
    return holders


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ours(pid: int) -> bool:
    """Is pid in this test run's process tree? Other people's lockprof runs
    on this shared machine are not. (A child that inherited lockprof's BPF
    fds and outlived it would be reparented away from us: the tests' commands
    end before lockprof does, so none can hold them afterwards.)"""
    me = os.getpid()
    seen = 0
    while pid > 1 and seen < 64:
        if pid == me:
            return True
        pid, seen = _ppid(pid), seen + 1
    return False


def lockprof_programs(settle_s: float = 3.0) -> list[str]:
    """Names of lockprof's BPF programs still loaded by this test run: ones
    nobody holds an fd to (pinned or leaked) or held by our process tree.

    The kernel frees a detached program after an RCU grace period, a moment
    after its last fd is closed: a nonempty answer is asked again until
    settle_s has passed."""
    deadline = time.monotonic() + settle_s
    while True:
        names = _lockprof_programs_now()
        if not names or time.monotonic() >= deadline:
            return names
        time.sleep(0.1)


def _lockprof_programs_now() -> list[str]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "-j"], capture_output=True, text=True, check=True
    )
    holders = _prog_holders()
    names = []
    for prog in json.loads(out.stdout or "[]"):
        name = prog.get("name", "")
        if not name.startswith(("lp_", "doc_")):
            continue
        pids = holders.get(prog.get("id", -1), set())
        if not pids or any(_ours(pid) for pid in pids):
            names.append(name)
    return names


NOBODY = 65534


@pytest.fixture(scope="module")
def as_nobody():
    """run(args, caps=..., cwd=...): lockprof as uid 65534 holding exactly the
    capabilities caps (setpriv names: "bpf,perfmon"), from a world-readable
    copy of the package (the checkout may be private: mktemp -d is 0700)."""
    public = Path(tempfile.mkdtemp(prefix="lockprof-nonroot-"))
    os.chmod(public, 0o755)
    for package in ("profiler", "probes", "dashboards"):
        shutil.copytree(REPO / package, public / package)
    user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    python = sys.executable
    if not _imports_as(user, python):
        # A private checkout (CI's fresh clone in mktemp -d): the venv, hard
        # linked into the public directory (same files, no copy), is readable.
        python = _public_venv(public)
        if python is None or not _imports_as(user, python):
            shutil.rmtree(public)
            pytest.skip("the venv is not readable by uid 65534 (private checkout)")

    def run(args: list[str], caps: str = "", cwd: Path | None = None, timeout: float = 120):
        wanted = ",".join(f"+{c}" for c in caps.split(",") if c)
        setcaps = [f"--inh-caps=-all{',' + wanted if wanted else ''}"]
        setcaps += [f"--ambient-caps=-all{',' + wanted if wanted else ''}"]
        env = {**os.environ, "PYTHONPATH": str(public), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run(
            [*user, *setcaps, python, "-m", "profiler.cli.main", *args],
            capture_output=True,
            text=True,
            cwd=cwd or "/",
            env=env,
            timeout=timeout,
        )

    yield run
    shutil.rmtree(public)


def _imports_as(user: list[str], python: str) -> bool:
    probe = subprocess.run(
        [*user, python, "-c", "import pandas, click, rich"], capture_output=True, cwd="/"
    )
    return probe.returncode == 0


def _public_venv(public: Path) -> str | None:
    """This venv hard linked into public (symlinks kept: its python is
    Debian's, for bcc), or None where links cannot be made (another file
    system)."""
    if sys.prefix == sys.base_prefix:
        return None  # not a venv: nothing of ours to link (and never all of /usr)
    venv = public / "venv"
    try:
        shutil.copytree(sys.prefix, venv, symlinks=True, copy_function=os.link)
    except (OSError, shutil.Error):
        return None
    return str(venv / "bin" / Path(sys.executable).name)


@pytest.fixture
def nobody_dir():
    """A directory uid 65534 may reach and write its files into (pytest's
    tmp_path is inside a 0700 directory)."""
    top = Path(tempfile.mkdtemp(prefix="lockprof-nobody-"))
    os.chmod(top, 0o755)
    directory = top / "out"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    yield directory
    shutil.rmtree(top)
