"""Lock specs: parsing, built-ins, target checks and mechanism planning (no root)."""

from __future__ import annotations

import pytest

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
