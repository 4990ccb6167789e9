"""Before/after comparison of two run sets (`lockprof compare`).

Pure functions of recordings: no root, no BPF.

Locks are matched across runs by a stable identity, never by address (kernel
addresses and pids differ from run to run):

* an mmap_lock is "mmap_lock (target COMM)" when its owner is the profiled
  process, else "mmap_lock (COMM)" with the owner's comm;
* any other lock is its class plus its name with the address left out: a
  kallsyms data symbol, or the top contending caller (function+offset).
  Unnamed locks of one class, and locks with the same top caller, are added
  up under one identity.

Lock spec classes can be paired (`--pair-class BEFORE=AFTER`): a patch that
replaces one lock implementation by another (pthread_rwlock by rw_mutex) has
a different lock class on each side, so no lock would match. Paired, the
before side's BEFORE locks and the after side's AFTER locks are both
relabelled "BEFORE -> AFTER" and compared mode by mode (read with read,
write with write, the spec's "sum" function with sum). A mode that only one
side has (the sum of rw_mutex, which pthread_rwlock lacks) counts 0 calls on
the other side.

All rows of one identity and mode in a run are merged (counts and totals
added, log2 histograms added, maxima taken) by relabelling the run's locks
and reusing aggregate.summary_rows. Each metric's side value is the mean over
that side's runs.

Noise: with at least MIN_RUNS runs per side, every delta carries a
confidence interval by a percentile bootstrap: runs are resampled with
replacement within each side (RESAMPLES times, numpy's default_rng seeded
with SEED, the same resampled runs for every metric), and the 2.5th and
97.5th percentiles of the resampled difference of means (and of the percent
change) are the 95% interval. A change is "significant" when that interval
excludes 0. With fewer runs on a side the difference is still given, but
significant is None and the verdict says there are too few runs to judge.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from profiler import aggregate, schema
from profiler.combine import lock_label
from profiler.errors import LockprofError
from profiler.recording import Recording
from profiler.runset import RunSet

COMPARE_VERSION = 1
SEED = 20070517  # any fixed value: results are reproducible, and the seed is printed
RESAMPLES = 10_000
CONFIDENCE = 0.95
# Fewest runs per side for a verdict. With 2 runs a side's resampled mean
# takes 3 values, and the difference of the two sides' means is at its most
# extreme (after's min - before's max, or after's max - before's min) in 1/16
# of the resamples, more than the 2.5% tail: the "95%" interval is that whole
# range, and "significant" means only that the runs of the two sides do not
# overlap, which 1 in 3 pairs of sides with no change at all do (measured: 32%
# of 2,000 simulated no-change comparisons, normal noise). From 3 runs the
# extremes have 1/729 of the resamples and the interval lies inside that
# range, an interval proper, though an optimistic one, as a percentile
# bootstrap is with few samples: the same simulation called 20% of no-change
# comparisons significant at 3 runs, 12% at 5, 8% at 10 (README, "Noise").
MIN_RUNS = 3

# (metric, unit, summable): a summable metric of a lock that a run never saw
# is 0 in that run; the others (ratios, percentiles, maxima) are unknown there.
LOCK_METRICS: list[tuple[str, str, bool]] = [
    ("acquisitions", "count", True),
    ("reader_writer_ratio", "ratio", False),
    ("contended", "count", True),
    ("wait_total_ns", "ns", True),
    ("wait_p50_ns", "ns", False),
    ("wait_p99_ns", "ns", False),
    ("wait_max_ns", "ns", False),
    ("hold_p50_ns", "ns", False),
    ("hold_p99_ns", "ns", False),
    ("hold_max_ns", "ns", False),
    ("downgrades", "count", True),
    # Failed trylocks (mmap_read_trylock under the per-VMA fault path, and
    # the like): `show`'s `fail`; no direction, as for acquisitions.
    ("trylock_failures", "count", True),
]
# Per-CPU totals: metric "cpuN.<name>".
CPU_METRICS: list[tuple[str, str]] = [
    ("acquisitions", "count"),
    ("contended", "count"),
    ("wait_total_ns", "ns"),
]
RUSAGE_METRICS: list[tuple[str, str, str]] = [
    # (metric, unit, headline name)
    ("user_s", "s", "user time"),
    ("sys_s", "s", "sys time"),
    ("elapsed_s", "s", "elapsed time"),
    ("minor_faults", "count", "minor faults"),
    ("throughput", "throughput", "throughput"),
]
# Which way is better, where a change's sign says so whatever the workload:
# less waiting and shorter holds, more throughput. Acquisitions, CPU and
# elapsed times and faults go either way (a patch that lets a fixed-time
# workload do more work raises them), so they get no direction.
LOWER_IS_BETTER = {
    "contended",
    "wait_total_ns",
    "wait_p50_ns",
    "wait_p99_ns",
    "wait_max_ns",
    "hold_p50_ns",
    "hold_p99_ns",
    "hold_max_ns",
}
HIGHER_IS_BETTER = {"throughput"}
# What the terminal shows per lock unless asked for everything.
KEY_METRICS = ("acquisitions", "contended", "wait_total_ns", "wait_p99_ns", "hold_p99_ns")

NOT_MEASURED = "not measured on both sides"

LockKey = tuple[str, str, str]  # (lock label, lock class, mode)


# -- identities -------------------------------------------------------------------


def lock_identity(row: dict, target_pid: int | None) -> tuple[str, str]:
    """(stable label, lock class) of one summary row (aggregate.summary_rows):
    combine.lock_label, which `show --combine-locks` combines rows by."""
    return lock_label(
        row.get("lock_class"),
        str(row.get("lock") or ""),
        row.get("owner_pid"),
        row.get("owner_comm"),
        target_pid,
    )


@dataclass
class Traced:
    """What a run's probes could see: a lock it did not see counts 0 only if
    it could have (a run without lock:contention_*, or with --lock-types
    leaving a type out, or on fewer CPUs, knows nothing of those locks).
    None: not recorded (older recordings), taken as everything."""

    families: frozenset[str] | None = None
    lock_types: frozenset[str] | None = None
    has_specs: bool | None = None
    cpus: int | None = None

    @classmethod
    def of(cls, meta: dict) -> Traced:
        families, types, specs = (meta.get(k) for k in ("families", "lock_types", "lock_specs"))
        cpus = meta.get("cpus")
        return cls(
            families=frozenset(families) if isinstance(families, list) else None,
            lock_types=frozenset(types) if isinstance(types, list) else None,
            has_specs=bool(specs) if isinstance(specs, list) else None,
            cpus=cpus if isinstance(cpus, int) and cpus > 0 else None,
        )

    def _contention(self, lock_type: str) -> bool:
        if self.families is not None and "contention" not in self.families:
            return False
        return self.lock_types is None or lock_type in self.lock_types

    def could_see(self, lock_class: str, metric: str) -> bool:
        """Whether this run would have counted (lock_class, metric) had it
        happened, so that its absence means 0 rather than unknown."""
        cpu, dot, _rest = metric.partition(".")
        if dot and self.cpus is not None and int(cpu[3:]) >= self.cpus:
            return False  # a CPU this machine does not have
        if lock_class == "mmap_lock":  # an rwsem: lock:contention_* sees it too
            mmap = self.families is None or "mmap_lock" in self.families
            return mmap or self._contention("rwsem")
        if lock_class in schema.LOCK_TYPES:
            return self._contention(lock_class)
        return self.has_specs is not False  # a lock spec's class (--locks)


@dataclass
class RunFigures:
    """One run's figures per lock identity and mode, and its histograms."""

    locks: dict[LockKey, dict[str, float | None]] = field(default_factory=dict)
    hists: dict[LockKey, dict[str, np.ndarray]] = field(default_factory=dict)
    rusage: dict[str, float | None] = field(default_factory=dict)
    traced: Traced = field(default_factory=Traced)


def _relabel(rec: Recording) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, tuple[str, str]]]:
    """The run's intervals and locks with each address replaced by a small
    integer per identity, so that summary_rows merges each identity's rows."""
    families = rec.meta.get("families") or []
    target_pid = rec.meta.get("target_pid")
    identity_of: dict[int, tuple[str, str]] = {}
    for row in aggregate.summary_rows(rec.intervals, rec.locks, families):
        identity_of[int(row["lock_id"], 16)] = lock_identity(row, target_pid)
    ids: dict[tuple[str, str], int] = {}
    address_to_id: dict[int, int] = {}
    for address in sorted({int(a) for a in rec.intervals["lock"].unique()}):
        ident = identity_of.get(address, ("unknown lock", "unknown"))
        address_to_id[address] = ids.setdefault(ident, len(ids) + 1)
    labels = {i: ident for ident, i in ids.items()}

    def mapped(series: pd.Series) -> pd.Series:
        return series.map(lambda a: address_to_id.get(int(a), 0)).astype("uint64")

    intervals = rec.intervals.copy()
    intervals["lock"] = mapped(intervals["lock"])
    locks = rec.locks[rec.locks["lock"].isin(list(address_to_id))].copy()
    locks["lock"] = mapped(locks["lock"])
    locks["address"] = locks["lock"]
    locks["name"] = [labels[int(i)][0] for i in locks["lock"]]
    locks["lock_class"] = [labels[int(i)][1] for i in locks["lock"]]
    locks["owner_pid"] = np.nan
    locks["owner_comm"] = None
    locks = locks.drop_duplicates(aggregate.KEY_COLUMNS).reset_index(drop=True)
    return intervals, locks, labels


def _hist_figure(hist: dict | None, key: str) -> float | None:
    if not hist or not hist.get("count"):
        return None
    value = hist.get(key)
    return None if value is None else float(value)


def run_figures(rec: Recording, throughput: float | None = None) -> RunFigures:
    """Every compared figure of one run."""
    figures = RunFigures(traced=Traced.of(rec.meta))
    rusage = rec.meta.get("rusage") or {}
    for metric, _unit, _name in RUSAGE_METRICS:
        value = throughput if metric == "throughput" else rusage.get(metric)
        figures.rusage[metric] = None if value is None else float(value)
    if rec.intervals.empty:
        return figures
    intervals, locks, labels = _relabel(rec)
    families = rec.meta.get("families") or []
    for row in aggregate.summary_rows(intervals, locks, families):
        label, lock_class = labels[int(row["lock_id"], 16)]
        key = (label, lock_class, row["mode"])
        wait, hold = row.get("wait_ns"), row.get("hold_ns")
        values: dict[str, float | None] = {
            "acquisitions": row.get("acquisitions"),
            "reader_writer_ratio": row.get("reader_writer_ratio"),
            "contended": row.get("contended"),
            "wait_total_ns": None if wait is None else float(wait["total"]),
            # Not compared: how many samples each percentile stands on.
            "wait_count": None if wait is None else wait.get("count"),
            "hold_count": None if hold is None else hold.get("count"),
            "wait_p50_ns": _hist_figure(wait, "p50"),
            "wait_p99_ns": _hist_figure(wait, "p99"),
            "wait_max_ns": _hist_figure(wait, "max"),
            "hold_p50_ns": _hist_figure(hold, "p50"),
            "hold_p99_ns": _hist_figure(hold, "p99"),
            "hold_max_ns": _hist_figure(hold, "max"),
            "downgrades": row.get("downgrades"),
            "trylock_failures": row.get("trylock_failures"),
        }
        for cpu in row.get("per_cpu") or []:
            for name, _unit in CPU_METRICS:
                values[f"cpu{cpu['cpu']}.{name}"] = cpu.get(name)
        figures.locks[key] = {k: None if v is None else float(v) for k, v in values.items()}
    figures.hists = _histograms(intervals, locks, labels)
    return figures


def _histograms(
    intervals: pd.DataFrame, locks: pd.DataFrame, labels: dict[int, tuple[str, str]]
) -> dict[LockKey, dict[str, np.ndarray]]:
    """Summed log2 histograms of wait and hold per identity and mode: of
    the rows of a family that counts every acquisition where there are any,
    as summary_rows does (aggregate.shadowed)."""
    merged = intervals.merge(locks, on=aggregate.KEY_COLUMNS, how="inner")
    merged = merged[merged["mode"].notna()]
    merged = merged[~aggregate.shadowed(merged)]
    out: dict[LockKey, dict[str, np.ndarray]] = {}
    for (lock, mode), rows in merged.groupby(["lock", "mode"], sort=False):
        label, lock_class = labels[int(lock)]  # type: ignore[call-overload]
        entry = {}
        for which in ("wait", "hold"):
            if rows[f"{which}_count"].sum() > 0:
                entry[which] = np.sum(np.array(rows[f"{which}_slots"].tolist(), dtype=float), 0)
        out[(label, lock_class, str(mode))] = entry
    return out


# -- paired lock classes ------------------------------------------------------------


def paired_class(before_class: str, after_class: str) -> str:
    return f"{before_class} -> {after_class}"


def _paired_key(key: LockKey, old_class: str, new_class: str) -> LockKey:
    label, lock_class, mode = key
    if lock_class != old_class:
        return key
    if label.startswith(old_class):
        label = new_class + label[len(old_class) :]
    else:
        label = f"{new_class}: {label}"
    return (label, new_class, mode)


def _relabel_classes(runs: list[RunFigures], old_class: str, new_class: str) -> None:
    for run in runs:
        run.locks = {_paired_key(k, old_class, new_class): v for k, v in run.locks.items()}
        run.hists = {_paired_key(k, old_class, new_class): v for k, v in run.hists.items()}


def _classes(runs: list[RunFigures]) -> set[str]:
    return {key[1] for run in runs for key in run.locks}


def pair_classes(
    before: list[RunFigures], after: list[RunFigures], pairs: dict[str, str]
) -> list[dict]:
    """Relabel the before side's class B and the after side's class A of
    each pair {B: A} to "B -> A", so that their locks match. Refuses a class
    that its side does not have (a typo would otherwise compare nothing)."""
    done = []
    for old_before, old_after in pairs.items():
        for side, runs, name in (("before", before, old_before), ("after", after, old_after)):
            if name not in _classes(runs):
                known = ", ".join(sorted(_classes(runs))) or "none"
                raise LockprofError(
                    f"--pair-class {old_before}={old_after}: the {side} side has no "
                    f"{name} locks (its lock classes: {known})",
                    exit_code=2,
                )
        new_class = paired_class(old_before, old_after)
        _relabel_classes(before, old_before, new_class)
        _relabel_classes(after, old_after, new_class)
        done.append({"before": old_before, "after": old_after, "as": new_class})
    return done


def _spec_classes(runset: RunSet) -> set[str]:
    names = set()
    for run in runset.runs:
        for spec in run.recording.meta.get("lock_specs") or []:
            if isinstance(spec, dict) and spec.get("name"):
                names.add(str(spec["name"]))
    return names


def spec_warnings(before: RunSet, after: RunSet, pairs: dict[str, str]) -> list[str]:
    """A hint when the sides probed different lock specs and were not paired."""
    b = _spec_classes(before) - set(pairs)
    a = _spec_classes(after) - set(pairs.values())
    only_b, only_a = sorted(b - a), sorted(a - b)
    if not only_b or not only_a:
        return []
    return [
        f"lock spec classes differ: before {', '.join(only_b)}, after {', '.join(only_a)}; "
        "their locks are compared as different locks, each absent on the other side "
        f"(--pair-class {only_b[0]}={only_a[0]} compares them as one lock, mode by mode)"
    ]


_CALLER = re.compile(r"^(?P<function>[^\s+]+)\+0x[0-9a-fA-F]+$")


def moved_caller_warnings(fig_b: list[RunFigures], fig_a: list[RunFigures]) -> list[str]:
    """A lock named by its caller (`zap_pte_range+0x99`) whose name is on
    one side only while the same function at another offset is on the
    other only: a patch to that function moves its call sites, and the
    lock then reads as gone and new. Said, not merged: two call sites of
    one function may well take different locks."""
    callers_b, callers_a = _callers_of(fig_b), _callers_of(fig_a)
    warnings = []
    for function in sorted(set(callers_b) & set(callers_a)):
        before = sorted(callers_b[function] - callers_a[function])
        after = sorted(callers_a[function] - callers_b[function])
        if before and after:
            warnings.append(
                f"{', '.join(before)} (before only) and {', '.join(after)} (after only): "
                f"call sites in {function} at other offsets, perhaps one lock whose "
                "caller the change moved; compared as different locks"
            )
    return warnings


def _callers_of(figures: list[RunFigures]) -> dict[str, set[str]]:
    """function -> the caller names (function+offset) of a side's locks."""
    callers: dict[str, set[str]] = {}
    for run in figures:
        for label, _lock_class, _mode in run.locks:
            match = _CALLER.match(label)
            if match:
                callers.setdefault(match["function"], set()).add(label)
    return callers


# A lock spec's "sum" rows: calls of its sum function and their latency.
SUM_METRIC_NAMES = {
    "acquisitions": "sum calls",
    "wait_total_ns": "time in sum",
    "wait_p50_ns": "sum p50",
    "wait_p99_ns": "sum p99",
    "wait_max_ns": "sum max",
}


def metric_name(mode: str, metric: str) -> str:
    """How a lock metric is shown: a spec's sum rows count calls, not
    acquisitions, and time inside the sum, not waits."""
    if mode != "sum":
        return metric
    cpu, dot, rest = metric.partition(".")
    if dot:
        return f"{cpu}.{SUM_METRIC_NAMES.get(rest, rest)}"
    return SUM_METRIC_NAMES.get(metric, metric)


# -- statistics -------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def percent(before: float | None, after: float | None) -> float | None:
    """100 * (after - before) / before; 0 when both are 0; None when unknowable."""
    if before is None or after is None:
        return None
    if before == 0:
        return 0.0 if after == 0 else None
    return 100.0 * (after - before) / before


def _resample_indices(n: int, seed: int, resamples: int) -> np.ndarray:
    """(resamples, n) run indices drawn with replacement. A fresh generator
    per call, so each metric of a given run count gets the same resampled runs
    whatever the order metrics are compared in."""
    return np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))


def bootstrap_ci(
    before: list[float], after: list[float], seed: int = SEED, resamples: int = RESAMPLES
) -> tuple[float, float, float | None, float | None]:
    """95% percentile-bootstrap interval of the difference of means (after -
    before) and of the percent change: (low, high, low_pct, high_pct).

    Runs are resampled with replacement within each side. The percent
    interval is None when a resample of the before side can have mean 0."""
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    mb = b[_resample_indices(len(b), seed, resamples)].mean(axis=1)
    ma = a[_resample_indices(len(a), seed + 1, resamples)].mean(axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(ma - mb, [tail, 100 - tail])
    if (b > 0).all() or (b < 0).all():
        low_pct, high_pct = np.percentile(100.0 * (ma - mb) / mb, [tail, 100 - tail])
        return float(low), float(high), float(low_pct), float(high_pct)
    if (b == 0).all() and (a == 0).all():
        return float(low), float(high), 0.0, 0.0
    return float(low), float(high), None, None


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def enough_runs(runs_before: int, runs_after: int) -> bool:
    return runs_before >= MIN_RUNS and runs_after >= MIN_RUNS


def too_few_runs(runs_before: int, runs_after: int) -> str:
    """'too few runs to judge (2 per side; need at least 3)'."""
    if runs_before == runs_after:
        counts = f"{runs_before} per side; need at least {MIN_RUNS}"
    else:
        counts = f"{runs_before} before, {runs_after} after; need at least {MIN_RUNS} per side"
    return f"too few runs to judge ({counts})"


def compare_values(
    before: list[float | None],
    after: list[float | None],
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> dict:
    """Before, after (means over runs), delta, percent, interval and verdict
    of one metric from its per-run values (None: not known in that run)."""
    b = [float(v) for v in before if v is not None and math.isfinite(v)]
    a = [float(v) for v in after if v is not None and math.isfinite(v)]
    mean_b, mean_a = _mean(b), _mean(a)
    delta = None if mean_b is None or mean_a is None else mean_a - mean_b
    result: dict = {
        "before": _clean(mean_b),
        "after": _clean(mean_a),
        "delta": _clean(delta),
        "delta_pct": _clean(percent(mean_b, mean_a)),
        "ci_low": None,
        "ci_high": None,
        "ci_low_pct": None,
        "ci_high_pct": None,
        "significant": None,
        "runs_before": len(b),
        "runs_after": len(a),
        "before_values": b,
        "after_values": a,
    }
    if delta is None:
        result["verdict"] = NOT_MEASURED
        return result
    if not enough_runs(len(b), len(a)):
        result["verdict"] = too_few_runs(len(b), len(a))
        return result
    low, high, low_pct, high_pct = bootstrap_ci(b, a, seed, resamples)
    significant = bool(low > 0 or high < 0)
    result.update(
        ci_low=_clean(low),
        ci_high=_clean(high),
        ci_low_pct=_clean(low_pct),
        ci_high_pct=_clean(high_pct),
        significant=significant,
        verdict=(
            ("significant increase" if delta > 0 else "significant decrease")
            if significant
            else "no significant change"
        ),
    )
    return result


def direction(metric: str, delta: float | None, significant: bool | None) -> str | None:
    """ "better" or "worse" for a significant change of a metric with a
    direction (LOWER_IS_BETTER, HIGHER_IS_BETTER), else None. A lock spec's
    sum rows time the writer's sum: less is better there too."""
    if not significant or delta is None or delta == 0:
        return None
    name = metric.partition(".")[2] if metric.startswith("cpu") else metric
    if name in LOWER_IS_BETTER:
        return "better" if delta < 0 else "worse"
    if name in HIGHER_IS_BETTER:
        return "better" if delta > 0 else "worse"
    return None


def shown_verdict(entry: dict) -> str:
    """The verdict with its direction: 'significant decrease (better)'."""
    way = entry.get("direction")
    return f"{entry['verdict']} ({way})" if way else entry["verdict"]


# -- the comparison ---------------------------------------------------------------


def side_figures(runset: RunSet) -> list[RunFigures]:
    return [run_figures(run.recording, run.throughput) for run in runset.runs]


def _lock_values(
    runs: list[RunFigures], key: LockKey, metric: str, summable: bool, seen: bool
) -> list[float | None]:
    """A metric's value in each run. A run that never saw the lock counts 0
    for a summable metric the probes measure (seen: known in some run)."""
    values = []
    for run in runs:
        absent = 0.0 if summable and seen and run.traced.could_see(key[1], metric) else None
        figures = run.locks.get(key)
        values.append(absent if figures is None else figures.get(metric, absent))
    return values


def _lock_order(
    keys: set[LockKey], before: list[RunFigures], after: list[RunFigures]
) -> list[LockKey]:
    """Locks by the larger side's mean wait total, then acquisitions; a
    lock's modes stay together."""

    def score(key: LockKey, metric: str) -> float:
        best = 0.0
        for runs in (before, after):
            values = [r.locks.get(key, {}).get(metric) or 0.0 for r in runs]
            best = max(best, float(np.mean(values)) if values else 0.0)
        return best

    per_lock: dict[tuple[str, str], tuple[float, float]] = {}
    for key in keys:
        lock = key[:2]
        wait, acq = score(key, "wait_total_ns"), score(key, "acquisitions")
        old = per_lock.get(lock, (0.0, 0.0))
        per_lock[lock] = (max(old[0], wait), max(old[1], acq))
    mode_rank = {"write": 0, "read": 1, "sum": 2, "exclusive": 3}
    return sorted(
        keys,
        key=lambda k: (
            -per_lock[k[:2]][0],
            -per_lock[k[:2]][1],
            k[0],
            mode_rank.get(k[2], 4),
        ),
    )


def _cpu_metrics(keys_runs: list[RunFigures], key: LockKey) -> list[str]:
    names = set()
    for run in keys_runs:
        names |= {m for m in run.locks.get(key, {}) if m.startswith("cpu")}

    def order(name: str) -> tuple[int, int]:
        cpu, metric = name.split(".", 1)
        index = [m for m, _u in CPU_METRICS].index(metric)
        return int(cpu[3:]), index

    return sorted(names, key=order)


def _cpu_unit(metric: str) -> str:
    return dict(CPU_METRICS)[metric.split(".", 1)[1]]


def lock_verdicts(
    before: list[RunFigures],
    after: list[RunFigures],
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> list[dict]:
    keys = {k for run in before + after for k in run.locks}
    verdicts = []
    for key in _lock_order(keys, before, after):
        label, lock_class, mode = key
        metrics = [(m, u, s) for m, u, s in LOCK_METRICS]
        metrics += [(m, _cpu_unit(m), True) for m in _cpu_metrics(before + after, key)]
        for metric, unit, summable in metrics:
            seen = any(run.locks.get(key, {}).get(metric) is not None for run in before + after)
            if not seen:
                continue  # the probes cannot know it for this lock
            b = _lock_values(before, key, metric, summable, seen)
            a = _lock_values(after, key, metric, summable, seen)
            entry: dict = {"lock": label, "lock_class": lock_class, "mode": mode}
            entry["metric"] = metric
            entry["name"] = metric_name(mode, metric)
            entry["unit"] = unit
            entry.update(compare_values(b, a, seed, resamples))
            if metric in SAMPLED_METRICS:
                _unless_too_few_samples(entry, before, after, key, SAMPLED_METRICS[metric])
            entry["direction"] = direction(metric, entry["delta"], entry["significant"])
            verdicts.append(entry)
    return verdicts


# A p99 of fewer samples than this a run is its largest sample or next to
# it: no verdict on it (a `-R` run's 44 start-up holds made a "significant
# increase (worse)" of its hold p99). metric -> the count it stands on.
MIN_P99_SAMPLES = 100
SAMPLED_METRICS = {"wait_p99_ns": "wait_count", "hold_p99_ns": "hold_count"}


def _unless_too_few_samples(
    entry: dict, before: list[RunFigures], after: list[RunFigures], key: LockKey, count: str
) -> None:
    """Take a p99's verdict back when a side has fewer than MIN_P99_SAMPLES
    samples a run (on average); its values stay."""
    if entry["delta"] is None:
        return
    means = []
    for runs in (before, after):
        counts = [(run.locks.get(key) or {}).get(count) or 0.0 for run in runs]
        means.append(float(np.mean(counts)) if counts else 0.0)
    if min(means) >= MIN_P99_SAMPLES:
        return
    entry.update(ci_low=None, ci_high=None, ci_low_pct=None, ci_high_pct=None, significant=None)
    # Rounded down: 99.6 is not "100 ... 100 needed".
    entry["verdict"] = (
        f"too few samples for a p99 ({math.floor(means[0]):,} before and "
        f"{math.floor(means[1]):,} after a run; {MIN_P99_SAMPLES} needed)"
    )


def side_target(side: dict) -> str:
    """What a side profiled, for a side without a command line."""
    mode = side.get("target_mode")
    return TARGET_MODES[mode][0] if mode else ""


def side_command(side: dict) -> str:
    """A side's command line, or what it profiled where it has none."""
    return " ".join(str(c) for c in side.get("command") or []) or side_target(side)


def target_shown(side: dict, suffix: str = "(the profiled process)") -> str:
    """What a side's process figures are of: 'the whole system', or its
    process and suffix ('lpbizzy (the profiled process)')."""
    if side.get("target_mode") == "system":
        return "the whole system"
    return f"{side.get('process') or '?'} {suffix}"


def _drop_unlike_throughputs(
    before: RunSet, after: RunSet, fig_b: list[RunFigures], fig_a: list[RunFigures]
) -> list[str]:
    """Throughputs read with two --throughput-regex values may not measure
    the same thing ("records/s" against "records in 2 s"): they are not
    compared, and a warning says why. Returns the warnings."""
    regexes = (before.throughput_regex, after.throughput_regex)
    if None in regexes or regexes[0] == regexes[1]:
        return []
    for run in fig_b + fig_a:
        run.rusage["throughput"] = None
    return [
        f"--throughput-regex differs: before '{regexes[0]}', after '{regexes[1]}': "
        "throughput not compared (the two may not read the same figure)"
    ]


def process_heading(document: dict) -> str:
    """What the process figures are of: 'lpbizzy (the profiled process)',
    'the whole system', or, when the sides differ, each side's: 'before the
    whole system, after lpbizzy (the profiled process)'."""
    before, after = target_shown(document["before"]), target_shown(document["after"])
    return before if before == after else f"before {before}, after {after}"


def process_name(runset: RunSet) -> str:
    """The profiled process, as its mmap_lock's owner is named (after an
    exec: `sh -c "exec lpbizzy"`, `taskset ... lpbizzy` are lpbizzy), else
    its command's first word."""
    comm = _target_comm(runset.runs[0].recording)
    if comm:
        return comm
    command = runset.command or (runset.runs[0].recording.meta.get("command") or [])
    if command:
        return Path(str(command[0])).name or str(command[0])
    return str(runset.runs[0].recording.meta.get("target") or "?")


def _target_comm(rec: Recording) -> str | None:
    """The name of the target pid's busiest own mmap_lock (not `run`'s
    pre-exec holder's), or None. A wrapper that execs the program
    (`sh -c "exec lpbizzy"`, `taskset`) owned an mm of the pid too, for a
    few acquisitions; the locks table's order does not say which came last."""
    from profiler.targets import PRE_EXEC_COMM

    pid, locks = rec.meta.get("target_pid"), rec.locks
    if pid is None or locks.empty:
        return None
    own = locks[
        (locks["lock_class"] == "mmap_lock")
        & (locks["owner_pid"] == pid)
        & (locks["owner_comm"] != PRE_EXEC_COMM)
    ].dropna(subset=["owner_comm"])
    if own.empty:
        return None
    totals = rec.interval_totals
    taken = totals.groupby("lock")["acquisitions"].sum() if not totals.empty else pd.Series()
    busiest = max(own.itertuples(), key=lambda row: int(taken.get(row.lock, 0)))
    return str(busiest.owner_comm)


def rusage_verdicts(
    before: list[RunFigures],
    after: list[RunFigures],
    process: str,
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> list[dict]:
    out = []
    for metric, unit, name in RUSAGE_METRICS:
        b = [run.rusage.get(metric) for run in before]
        a = [run.rusage.get(metric) for run in after]
        if all(v is None for v in b + a):
            continue
        entry: dict = {"process": process, "metric": metric, "name": name, "unit": unit}
        entry.update(compare_values(b, a, seed, resamples))
        entry["direction"] = direction(metric, entry["delta"], entry["significant"])
        out.append(entry)
    return out


# -- mismatch guard -----------------------------------------------------------------


def _distinct(values: list) -> list:
    out: list = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _shown(value) -> str:
    if isinstance(value, list):
        return shlex.join(str(v) for v in value) if value else "(none)"
    return str(value)


def _mechanisms(rec: Recording) -> list[str]:
    return sorted(
        f"{m.get('probe')}={m.get('mechanism')}"
        for m in rec.meta.get("mechanisms") or []
        if isinstance(m, dict)
    )


def _side_values(runset: RunSet, what: str) -> list:
    if what == "mechanisms":
        return _distinct([_mechanisms(run.recording) for run in runset.runs])
    if what == "command":
        return _distinct([list(run.recording.meta.get("command") or []) for run in runset.runs])
    if what == "lock_types":
        return _distinct([",".join(v) if v else "every type" for v in runset.meta(what)])
    return _distinct(runset.meta(what))


MISMATCH_FIELDS = [
    ("kernel", "kernel release", " (expected when comparing a kernel patch)"),
    ("cpus", "CPU count", ""),
    ("command", "command line", ""),
    ("mechanisms", "mechanisms", " (the sides did not measure the same events)"),
    ("lock_types", "--lock-types", " (the sides did not trace the same lock types' contention)"),
]


# What a recording profiled (its meta's "mode", from the target), how the
# warnings name it, and what its rusage covers.
TARGET_MODES = {
    "system": ("the whole system (record -a)", "the whole system's"),
    "attach": ("a running process (attach)", "the process's own (over the collection window)"),
    "run": ("a command lockprof started (run, bench)", "the command's and its reaped children's"),
}


def target_mode(meta: dict) -> str | None:
    """'system', 'attach' or 'run'; None when the recording does not say."""
    mode = meta.get("mode")
    return mode if mode in TARGET_MODES else None


def _modes(runset: RunSet) -> list[str | None]:
    """The side's distinct target modes, in run order."""
    return _distinct([target_mode(run.recording.meta) for run in runset.runs])


def _side_mode(runset: RunSet) -> str | None:
    """The side's target mode, None when its runs do not agree or say."""
    modes = _modes(runset)
    return modes[0] if len(modes) == 1 else None


def target_mode_warnings(before: RunSet, after: RunSet) -> list[str]:
    """The sides profiled different kinds of target: the whole system
    against one process, or a running process against a command. The
    process figures then measure different things, and a system-wide side
    also counts every other process's locks."""
    warnings = []
    for side, runset in (("before", before), ("after", after)):
        modes = _modes(runset)
        if len(modes) > 1:
            shown = "; ".join(TARGET_MODES[m][0] if m else "not recorded" for m in modes)
            warnings.append(f"profiled target differs between the {side} runs: {shown}")
    b, a = _side_mode(before), _side_mode(after)
    if b is None or a is None or b == a:
        return warnings
    text = (
        f"profiled target differs: before {TARGET_MODES[b][0]}, after {TARGET_MODES[a][0]}; "
        f"the user, sys, elapsed time and minor faults before are {TARGET_MODES[b][1]}, "
        f"after {TARGET_MODES[a][1]}"
    )
    if "system" in (b, a):
        wide, other = ("before", "after") if b == "system" else ("after", "before")
        text += (
            f"; the {wide} side counts every process's locks, the {other} side the target's only"
        )
    warnings.append(text + ": the sides do not measure the same thing")
    return warnings


def mismatch_warnings(before: RunSet, after: RunSet) -> list[str]:
    """What differs between (or within) the sides, and other caveats."""
    warnings = same_file_warnings(before, after) + target_mode_warnings(before, after)
    b_mode, a_mode = _side_mode(before), _side_mode(after)
    # The command line is left out exactly when target_mode_warnings says
    # one side is the whole system (which has no command) and the other not.
    system_against_target = (
        None not in (b_mode, a_mode) and b_mode != a_mode and "system" in (b_mode, a_mode)
    )
    for key, name, note in MISMATCH_FIELDS:
        b, a = _side_values(before, key), _side_values(after, key)
        for side, values in (("before", b), ("after", a)):
            if len(values) > 1:
                shown = "; ".join(_shown(v) for v in values)
                warnings.append(f"{name} differs between the {side} runs: {shown}")
        if key == "command" and system_against_target:
            continue  # the whole system has no command: the target warning says so
        if b != a:
            warnings.append(
                f"{name} differs: before {' | '.join(_shown(v) for v in b)}, "
                f"after {' | '.join(_shown(v) for v in a)}{note}"
            )
    warnings += duration_warnings(before, after)
    for side, runset in (("before", before), ("after", after)):
        failed = [
            f"run {i} exited {run.exit_status}"
            for i, run in enumerate(runset.runs, start=1)
            if run.failed
        ]
        if failed:
            warnings.append(f"{side}: {', '.join(failed)}")
        lost = sum(int(run.recording.meta.get("lost_events") or 0) for run in runset.runs)
        if lost:
            warnings.append(
                f"{side}: {lost:,} events lost (aggregates are exact; timelines miss them)"
            )
    return warnings


def same_file_warnings(before: RunSet, after: RunSet) -> list[str]:
    """BEFORE and AFTER name one file (a typo, a tab completion): every
    change is 0, which reads as "the patch did nothing"."""
    if not before.source or not after.source:
        return []
    try:
        same = Path(before.source).samefile(after.source)
    except OSError:
        return []
    return (
        [f"BEFORE and AFTER are the same file ({after.source}): nothing can differ"] if same else []
    )


# Sides whose mean collection times differ by more than this fraction are
# warned about, when collection was time-bounded: counts and totals are per
# run, not per second.
DURATION_TOLERANCE = 0.1


def _time_bounded(runset: RunSet) -> bool:
    """Some run's collection was stopped by -d, not by its command's end. A
    fixed amount of work taking less time is what a patch is for, and no
    cause for a warning; a fixed time taking a different time is."""
    return any(str(reason or "").startswith("duration ") for reason in runset.meta("stop_reason"))


def _mean_duration(runset: RunSet) -> float | None:
    durations = [d for d in runset.meta("duration_s") if isinstance(d, int | float) and d > 0]
    return float(np.mean(durations)) if durations else None


def duration_warnings(before: RunSet, after: RunSet) -> list[str]:
    """The sides collected for different set times (-d): a 3 s run has half
    again the acquisitions and wait total of a 2 s one, with no change to
    the locks."""
    if not (_time_bounded(before) or _time_bounded(after)):
        return []
    b, a = _mean_duration(before), _mean_duration(after)
    if b is None or a is None or abs(a - b) <= DURATION_TOLERANCE * max(a, b):
        return []
    return [
        f"collection time differs: before {b:.3g} s, after {a:.3g} s (mean per run); "
        "counts and wait totals are per run, not per second, so they differ by that much "
        "for this alone"
    ]


def target_warnings(runset: RunSet, figures: list[RunFigures], side: str) -> list[str]:
    """Runs of a command whose mmap_lock rows name no lock of the target.

    The owner of an mmap_lock is learned from its mm's address. When the
    command has exited, a new process can get an mm at the same address
    before collection ends, and the lock is then filed under that owner.
    """
    out = []
    for i, (run, fig) in enumerate(zip(runset.runs, figures, strict=True), start=1):
        meta = run.recording.meta
        if not meta.get("target_pid") or "mmap_lock" not in (meta.get("families") or []):
            continue
        labels = {key[0] for key in fig.locks if key[1] == "mmap_lock"}
        command = meta.get("command") or [""]
        expected = f"mmap_lock (target {Path(str(command[0])).name[:15]})"
        foreign = sorted(label for label in labels if not label.startswith("mmap_lock (target "))
        if expected not in labels and foreign:
            out.append(
                f"{side} run {i}: no mmap_lock is owned by the target pid "
                f"{meta['target_pid']} ({expected[11:-1]}), but {', '.join(foreign)} is: the "
                "command's figures may be filed under another owner (an mm address reused "
                "after the command exited), which skews this comparison"
            )
    return out


# -- the document --------------------------------------------------------------------


def side_info(runset: RunSet) -> dict:
    first = runset.runs[0].recording.meta
    return {
        "label": runset.label,
        "source": runset.source,
        "runs": len(runset.runs),
        "kernel": first.get("kernel"),
        "cpus": first.get("cpus"),
        "command": runset.command or first.get("command"),
        "target_mode": _side_mode(runset),
        "process": process_name(runset),
        "mechanisms": _mechanisms(runset.runs[0].recording),
        "throughput_regex": runset.throughput_regex,
        "exit_statuses": [run.exit_status for run in runset.runs],
    }


def method(seed: int = SEED, resamples: int = RESAMPLES) -> dict:
    return {
        "name": "percentile bootstrap",
        "statistic": "difference of the means of runs (after - before), and percent change",
        "resampling": "runs resampled with replacement within each side",
        "resamples": resamples,
        "seed": seed,
        "rng": "numpy.random.default_rng",
        "confidence": CONFIDENCE,
        "significant": "the interval excludes 0",
        "requires": (
            f"at least {MIN_RUNS} runs per side; with fewer, significant is null and "
            "the verdict says there are too few runs to judge; a p99 needs "
            f"{MIN_P99_SAMPLES} samples a run on each side (else significant is null too)"
        ),
        "min_runs": MIN_RUNS,
        "min_p99_samples": MIN_P99_SAMPLES,
    }


@dataclass
class Comparison:
    """The JSON document (`compare --json`) and, for the HTML page, the mean
    per-run log2 histograms of each side per lock identity and mode."""

    document: dict
    hists: dict[LockKey, dict[str, dict[str, np.ndarray]]]


def _mean_hists(runs: list[RunFigures]) -> dict[LockKey, dict[str, np.ndarray]]:
    out: dict[LockKey, dict[str, np.ndarray]] = {}
    for run in runs:
        for key, entry in run.hists.items():
            for which, slots in entry.items():
                slot = out.setdefault(key, {})
                slot[which] = slot.get(which, 0) + slots / max(len(runs), 1)
    return out


def compare(
    before: RunSet,
    after: RunSet,
    seed: int = SEED,
    resamples: int = RESAMPLES,
    pairs: dict[str, str] | None = None,
) -> Comparison:
    """Compare two run sets: verdicts per lock and mode, per process, warnings.
    pairs {before class: after class} matches the locks of two lock classes
    (see pair_classes)."""
    pairs = pairs or {}
    fig_b, fig_a = side_figures(before), side_figures(after)
    paired = pair_classes(fig_b, fig_a, pairs)
    side_b, side_a = side_info(before), side_info(after)
    process = side_b["process"]
    regex_warnings = _drop_unlike_throughputs(before, after, fig_b, fig_a)
    rusage = rusage_verdicts(fig_b, fig_a, process, seed, resamples)
    runs_before, runs_after = len(before.runs), len(after.runs)
    document = {
        "compare_version": COMPARE_VERSION,
        "before": side_b,
        "after": side_a,
        "method": method(seed, resamples),
        "confidence": (
            f"{int(CONFIDENCE * 100)}% bootstrap intervals from {runs_before} and {runs_after} runs"
            if enough_runs(runs_before, runs_after)
            else f"none: {too_few_runs(runs_before, runs_after)}"
        ),
        "paired_classes": paired,
        "warnings": mismatch_warnings(before, after)
        + regex_warnings
        + spec_warnings(before, after, pairs)
        + target_warnings(before, fig_b, "before")
        + target_warnings(after, fig_a, "after")
        + moved_caller_warnings(fig_b, fig_a),
        "headline": [headline(entry) for entry in rusage],
        "verdicts": lock_verdicts(fig_b, fig_a, seed, resamples),
        "rusage": rusage,
    }
    hists = {}
    mean_b, mean_a = _mean_hists(fig_b), _mean_hists(fig_a)
    for key in set(mean_b) | set(mean_a):
        hists[key] = {"before": mean_b.get(key, {}), "after": mean_a.get(key, {})}
    return Comparison(document=document, hists=hists)


# -- words --------------------------------------------------------------------------


def fmt_value(value: float | None, unit: str) -> str:
    from profiler.render import fmt_ns

    if value is None:
        return "-"
    if unit == "ns":
        return f"-{fmt_ns(-value)}" if value < 0 else fmt_ns(value)
    if unit == "s":
        return f"{value:.3g} s" if abs(value) < 100 else f"{value:,.0f} s"
    if unit == "ratio":
        return f"{value:.3g}"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.05:
        return f"{value:+.2g}%"  # not "-0.0%" for a real, tiny change
    if abs(value) >= 1000:
        return f"{value:+,.0f}%"  # "+173,300%", not "+173300.0%"
    return f"{value:+.1f}%"


# How the terminal and the page name a lock metric (the show table's words).
# The one label that is not its metric's name without _ns and underscores.
_LABELS = {"reader_writer_ratio": "reader:writer ratio"}


def metric_label(mode: str, metric: str) -> str:
    """A lock metric as the terminal and the page show it: 'wait total',
    'cpu0 acquisitions', and a spec's sum rows as 'time in sum' (metric_name,
    then spaces for the dot and the underscores)."""
    name = metric_name(mode, metric)
    cpu, dot, rest = name.partition(".")
    if dot and cpu.startswith("cpu"):
        return f"{cpu} {_label(rest)}"
    return _label(name)


def _label(name: str) -> str:
    return _LABELS.get(name, name.removesuffix("_ns").replace("_", " "))


def entry_label(entry: dict) -> str:
    """The shown name of a verdict (its lock metric's label) or of a
    process figure (its name: 'sys time')."""
    if "process" in entry or "mode" not in entry:
        return entry.get("name") or entry["metric"]
    return metric_label(entry["mode"], entry["metric"])


def _zero_to_zero(entry: dict) -> bool:
    return entry.get("before") == 0 and entry.get("after") == 0


def fmt_delta(entry: dict) -> str:
    """The delta column: always a percent change, or a word where there is
    none: 'new' (0 before), 'unchanged' (0 -> 0), '-' (not on both sides)."""
    if entry.get("delta") is None:
        return "-"
    if _zero_to_zero(entry):
        return "unchanged"
    if entry.get("delta_pct") is not None:
        return fmt_pct(entry["delta_pct"])
    return "new" if entry.get("before") == 0 else "-"  # absent before, present after


# A percent change whose interval is missing because some before run was 0:
# a resample of only those runs has a before mean of 0, and an unbounded
# percent change. The verdict still comes from the absolute interval.
NO_PERCENT_CI = "n/a"
NO_PERCENT_CI_WHY = "no percent CI: a before run was 0"
NO_PERCENT_CI_NOTE = (
    f"({NO_PERCENT_CI}: no percent CI, as a before run was 0 and a resample drawing only "
    "such runs has an unbounded percent change; the verdict comes from the absolute "
    "interval, ci_low and ci_high in --json)"
)


def ci_missing_percent(entry: dict) -> bool:
    """A judged percent change with no percent interval (NO_PERCENT_CI)."""
    return (
        entry.get("significant") is not None
        and entry.get("delta_pct") is not None
        and not _zero_to_zero(entry)
        and entry.get("ci_low_pct") is None
    )


def fmt_ci(entry: dict) -> str:
    """The 95% CI column, in percent like the delta: '-14.2% to -7.0%';
    NO_PERCENT_CI where a before run was 0; '-' where there is no interval
    to show (too few runs, not on both sides, 0 -> 0, new)."""
    if ci_missing_percent(entry):
        return NO_PERCENT_CI
    if entry.get("significant") is None or _zero_to_zero(entry) or entry.get("ci_low_pct") is None:
        return "-"
    return f"{fmt_pct(entry['ci_low_pct'])} to {fmt_pct(entry['ci_high_pct'])}"


def headline(entry: dict) -> str:
    """'sys time: 1.23 s -> 1.10 s (-10.6%, 95% CI -14.2% to -7.0%): significant decrease'."""
    unit = entry.get("unit", "count")
    before, after = fmt_value(entry["before"], unit), fmt_value(entry["after"], unit)
    start = f"{entry_label(entry)}: {before} -> {after}"
    verdict = shown_verdict(entry)
    if entry.get("delta") is None:
        return f"{start}: {verdict}"
    change = fmt_delta(entry)
    ci = fmt_ci(entry)
    if ci_missing_percent(entry):
        change += f", {NO_PERCENT_CI_WHY}"
    elif ci != "-":
        change += f", {int(CONFIDENCE * 100)}% CI {ci}"
    return f"{start} ({change}): {verdict}"
