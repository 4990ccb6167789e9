"""Lock specs: parsing, built-ins, target checks and mechanism planning (no root)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler import lockspec, probes
from profiler.errors import LockprofError, MechanismUnavailable

GOOD = """
name = "my_rwlock"
target = "kernel"
[functions]
read_lock = ["my_read_lock"]
read_unlock = "my_read_unlock"
write_lock = ["my_write_lock", "my_write_lock_killable"]
write_unlock = ["my_write_unlock"]
sum = ["my_sum"]
status = ["my_write_lock_killable"]
"""


def test_parse_a_full_spec():
    spec = lockspec.parse_toml(GOOD, "t.toml")
    assert spec.name == "my_rwlock" and spec.in_kernel
    assert spec.role("write_lock") == ("my_write_lock", "my_write_lock_killable")
    assert spec.role("read_unlock") == ("my_read_unlock",)
    assert spec.status == {"my_write_lock_killable"}
    assert spec.role("unlock") == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name = ", "invalid TOML"),
        ('target = "kernel"\n[functions]\nread_lock=["a"]\nunlock=["b"]', "'name'"),
        ('name = "x"\n', "missing [functions]"),
        ('name = "x"\n[functions]\nread_lock = ["a"]\n', "at least one lock and one unlock"),
        ('name = "x"\n[functions]\nunlock = ["a"]\n', "at least one lock and one unlock"),
        (
            'name = "x"\n[functions]\nread_lock=["a"]\nunlock=["b"]\nlokc=["c"]',
            "unknown function role",
        ),
        ('name = "x"\n[functions]\nread_lock=["a"]\nunlock=["a"]', "both read_lock and unlock"),
        ('name = "x"\n[functions]\nread_lock=[1]\nunlock=["b"]', "list of function names"),
        ('name = "x"\n[functions]\nread_lock=["a b"]\nunlock=["b"]', "list of function names"),
        (
            'name = "x"\n[functions]\nread_lock=["a"]\nunlock=["b"]\nstatus=["b"]',
            "not a lock function",
        ),
        ('name = "x"\nextra = 1\n[functions]\nread_lock=["a"]\nunlock=["b"]', "unknown key"),
        ('name = "<b>\\u001b[31m"\n[functions]\nread_lock=["a"]\nunlock=["b"]', "printable"),
    ],
)
def test_bad_specs_are_refused_with_one_line(text, message):
    with pytest.raises(LockprofError) as info:
        lockspec.parse_toml(text, "t.toml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_builtins_have_the_issue_functions():
    rw_mutex = lockspec.resolve("rw_mutex")
    assert rw_mutex.in_kernel
    assert rw_mutex.role("read_lock") == ("rw_mutex_read_lock",)
    assert rw_mutex.role("sum") == ("percpu_counter_sum",)
    pthread = lockspec.resolve("pthread_rwlock")
    assert not pthread.in_kernel and pthread.target.endswith("libc.so.6")
    assert pthread.role("unlock") == ("pthread_rwlock_unlock",)
    assert "pthread_rwlock_rdlock" in pthread.status
    rwsem = lockspec.resolve("rwsem")
    assert "down_read_killable" in rwsem.status and "down_read" not in rwsem.status


def test_builtin_retargeted_at_a_binary(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"")
    spec = lockspec.resolve(f"rw_mutex@{lib}")
    assert spec.target == str(lib) and not spec.in_kernel


def test_toml_target_is_relative_to_the_spec_file(tmp_path):
    (tmp_path / "s.toml").write_text(GOOD.replace('"kernel"', '"bin/app"'))
    spec = lockspec.resolve(str(tmp_path / "s.toml"))
    assert spec.target == str(tmp_path / "bin" / "app")


def test_unknown_spec_names_the_builtins():
    with pytest.raises(
        LockprofError, match="built-in: percpu_counter_sum, pthread_rwlock, rw_mutex, rwsem"
    ):
        lockspec.resolve("nope")


def test_a_bad_spec_is_a_bad_argument_exit_2(tmp_path):
    """As an unknown --lock-types value is (it gave 1)."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = [")
    for argument in ("nope", str(tmp_path / "absent.toml"), str(fifo), str(bad_toml)):
        with pytest.raises(LockprofError) as excinfo:
            lockspec.resolve(argument)
        assert excinfo.value.exit_code == 2, argument
    spec = lockspec.parse_toml(GOOD, "t.toml")
    with pytest.raises(LockprofError) as excinfo:
        lockspec.check_target(spec, lambda _p: set(), lambda: {"other"})
    assert excinfo.value.exit_code == 2


def test_check_target_names_the_first_missing_function(tmp_path):
    spec = lockspec.parse_toml(GOOD, "t.toml")
    with pytest.raises(LockprofError, match=r"has no function my_read_lock \(and 5 more\)"):
        lockspec.check_target(spec, lambda _p: set(), lambda: {"other"})
    lockspec.check_target(spec, lambda _p: set(), lambda: set(spec.symbols()))


def test_check_target_refuses_a_missing_binary(tmp_path):
    spec = lockspec.resolve(f"rw_mutex@{tmp_path / 'absent.so'}")
    with pytest.raises(LockprofError, match="no readable binary"):
        lockspec.check_target(spec, lambda _p: set(), set)


def test_user_spec_plans_uprobes_with_returns():
    spec = lockspec.resolve("pthread_rwlock")
    plans = probes.spec_plan(spec, {"uprobe"})
    by_point = {(p.point.target.rsplit(":", 1)[1], p.point.ret): p.probe.fn for p in plans}
    assert by_point[("pthread_rwlock_rdlock", False)] == "lp_spec_read_lock"
    assert by_point[("pthread_rwlock_rdlock", True)] == "lp_spec_lock_ret_rc"
    assert by_point[("pthread_rwlock_wrlock", False)] == "lp_spec_write_lock"
    assert by_point[("pthread_rwlock_unlock", False)] == "lp_spec_unlock"
    assert ("pthread_rwlock_unlock", True) not in by_point  # unlocks need no return probe
    assert {p.point.mechanism for p in plans} == {"uprobe"}


def test_kernel_spec_plans_kprobes_and_void_returns():
    plans = probes.spec_plan(lockspec.resolve("rw_mutex"), {"kprobe", "uprobe"})
    by_point = {(p.point.target, p.point.ret): p.probe.fn for p in plans}
    assert {p.point.mechanism for p in plans} == {"kprobe"}
    assert by_point[("rw_mutex_read_lock", True)] == "lp_spec_lock_ret"  # returns void
    assert by_point[("percpu_counter_sum", False)] == "lp_spec_sum"
    assert by_point[("percpu_counter_sum", True)] == "lp_spec_sum_ret"
    assert by_point[("rw_mutex_write_unlock", False)] == "lp_spec_write_unlock"


def test_kernel_spec_without_kprobes_names_spec_and_mechanism():
    # This machine's case: fentry and kprobes do not work.
    with pytest.raises(MechanismUnavailable) as info:
        probes.spec_plan(lockspec.resolve("rwsem"), {"raw_tracepoint", "tracepoint", "uprobe"})
    assert "lock spec rwsem" in str(info.value) and "kprobe" in str(info.value)


def test_every_spec_function_exists_in_the_bpf_source():
    from profiler import schema

    source = (schema.probes_dir() / "lockprof.bpf.c").read_text()
    spec = lockspec.parse_toml(GOOD, "t.toml")
    fns = {p.probe.fn for p in probes.spec_plan(spec, {"kprobe"})}
    fns |= {p.probe.fn for p in probes.spec_plan(lockspec.resolve("pthread_rwlock"), {"uprobe"})}
    for fn in fns:
        assert f"int {fn}(struct pt_regs *ctx)" in source, fn


def test_a_sum_only_spec_times_the_sum_function():
    spec = lockspec.resolve("percpu_counter_sum")
    assert spec.in_kernel and spec.role("sum") == ("__percpu_counter_sum",)
    plans = probes.spec_plan(spec, {"kprobe"})
    assert {(p.point.target, p.point.ret, p.probe.fn) for p in plans} == {
        ("__percpu_counter_sum", False, "lp_spec_sum"),
        ("__percpu_counter_sum", True, "lp_spec_sum_ret"),
    }
    # This machine: no kprobes, so a clear refusal naming the spec.
    with pytest.raises(MechanismUnavailable, match="lock spec percpu_counter_sum"):
        probes.spec_plan(spec, {"uprobe", "raw_tracepoint"})
    # A sum function next to only half a lock is still refused.
    with pytest.raises(LockprofError, match="or only a sum function"):
        lockspec.parse_toml('name = "x"\n[functions]\nread_lock=["a"]\nsum=["s"]', "t")


# -- fuzzing: any text, any TOML document, any --locks argument ------------------------------

_NAME = st.text(min_size=0, max_size=12)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NAME, inner, max_size=4),
    max_leaves=12,
)
_ROLE_VALUE = st.one_of(st.lists(st.text(max_size=10), max_size=3), st.text(max_size=10), _VALUE)
_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=70), _VALUE),
        "target": st.one_of(st.sampled_from(["kernel", "/bin/true", "", "rel/lib.so"]), _VALUE),
        "functions": st.one_of(
            st.dictionaries(
                st.sampled_from([*lockspec.ROLES, "status", "bogus"]), _ROLE_VALUE, max_size=7
            ),
            _VALUE,
        ),
        "extra": _VALUE,
    },
)


def _toml_value(value) -> str:
    """A TOML rendering of what hypothesis drew (tables inline)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, int) or value == value else "0"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _accept_or_refuse(call):
    """A parse either gives a checked LockSpec or one clear LockprofError line."""
    try:
        spec = call()
    except LockprofError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return None
    assert isinstance(spec, lockspec.LockSpec)
    assert spec.symbols(), spec
    lockspec.check_shape(spec, "again")  # what parse returned is well formed
    return spec


@given(st.text(max_size=400))
def test_fuzz_parse_toml_any_text(text):
    _accept_or_refuse(lambda: lockspec.parse_toml(text, "fuzz.toml"))


@given(_DOCS)
def test_fuzz_parse_toml_documents(doc):
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items()]
    text = "\n".join(lines)
    spec = _accept_or_refuse(lambda: lockspec.parse_toml(text, "fuzz.toml"))
    if spec is not None:
        assert spec.name == doc["name"].strip() and spec.name.isprintable()
        for fn in spec.symbols():
            assert fn.strip() and fn.isprintable() and " " not in fn


@given(st.text(max_size=60))
def test_fuzz_resolve_any_argument(argument):
    """Built-in names, NAME@TARGET, paths that exist or not, NUL bytes:
    a LockSpec or one line, never another exception."""
    _accept_or_refuse(lambda: lockspec.resolve(argument))


@given(st.binary(max_size=300))
def test_fuzz_resolve_a_spec_file_of_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("spec") / "fuzz.toml"
    path.write_bytes(data)
    _accept_or_refuse(lambda: lockspec.resolve(str(path)))


def test_resolve_refuses_special_files_without_blocking(tmp_path):
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    for argument, message in (
        (str(fifo), "is not a regular file"),  # opening it to read would wait for a writer
        ("/dev/zero", "is not a regular file"),  # would never end
        ("a\0b", "invalid lock spec"),
        ("", "invalid lock spec"),
    ):
        with pytest.raises(LockprofError, match=message):
            lockspec.resolve(argument)


def test_resolve_refuses_a_huge_spec_file(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (lockspec.MAX_SPEC_BYTES + 1))
    with pytest.raises(LockprofError, match="at most 1,048,576 are read"):
        lockspec.resolve(str(big))


_FN = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True)


@given(
    st.dictionaries(st.sampled_from(lockspec.ROLES), st.lists(_FN, max_size=3), max_size=6),
    st.lists(_FN, max_size=2),
)
def test_fuzz_well_formed_specs_keep_every_function(roles, status):
    """Specs built from valid names: accepted exactly when they have a lock
    and an unlock (or only a sum function), no function in two roles and
    status naming lock functions; then every function is kept in its role."""
    doc = {"name": "fuzz", "target": "kernel", "functions": {**roles, "status": status}}
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in doc.items())
    locks = [f for r in ("read_lock", "write_lock") for f in roles.get(r, [])]
    unlocks = [f for r in ("read_unlock", "write_unlock", "unlock") for f in roles.get(r, [])]
    every = [f for fns in roles.values() for f in fns]
    sum_only = bool(roles.get("sum")) and not locks and not unlocks
    valid = (
        ((bool(locks) and bool(unlocks)) or sum_only)
        and len(every) == len(set(every))
        and set(status) <= set(locks)
    )
    spec = _accept_or_refuse(lambda: lockspec.parse_toml(text, "fuzz.toml"))
    assert (spec is not None) == valid
    if spec is not None:
        assert {r: list(spec.role(r)) for r in roles} == roles
        assert spec.status == set(status)
