# lockprof developer entry points. `make demo` and `make test` set up a fresh
# machine first (as root): see scripts/setup.sh.
VENV := .venv
PY := $(VENV)/bin/python
LOCKPROF := $(VENV)/bin/lockprof
DEMO_SECONDS ?= 10
DEMO_OUT ?= demo.lpr
DEMO_HTML ?= demo.html
COMPARE_RUNS ?= 3
COMPARE_SECONDS ?= 3
COMPARE_THREADS ?= 4
COMPARE_HTML ?= compare.html
PATCH_RUNS ?= 3
PATCH_SECONDS ?= 3
PATCH_THREADS ?= 4
PATCH_HTML ?= compare-patch.html

.PHONY: setup demo demo-compare demo-patch test test-unit test-integration lint bench workloads clean

setup:
	@scripts/setup.sh $(SETUP_ARGS)

workloads:
	@$(MAKE) -s -C workloads

# Profile the built-in ebizzy-like workload: live view, recording, summary,
# and the HTML report (self-contained: open it in any browser, offline).
demo: setup
	$(LOCKPROF) run -i 1 -o $(DEMO_OUT) --html $(DEMO_HTML) -- workloads/bin/lpbizzy -t 4 -S $(DEMO_SECONDS)
	@echo "recording: $(DEMO_OUT)  (summarise again with: $(LOCKPROF) show $(DEMO_OUT) [--json])"
	@echo "report: $(abspath $(DEMO_HTML))  (rebuild with: $(LOCKPROF) report $(DEMO_OUT) -o $(DEMO_HTML))"

# Before/after: lpbizzy with one mmap+munmap per operation (as ebizzy -m) vs
# reused buffers (-R), COMPARE_RUNS runs each; verdicts and compare.html.
demo-compare: setup
	$(LOCKPROF) bench --runs $(COMPARE_RUNS) --label before -o before.lpset \
		--throughput-regex '([0-9]+) records/s' -- \
		workloads/bin/lpbizzy -t $(COMPARE_THREADS) -S $(COMPARE_SECONDS)
	$(LOCKPROF) bench --runs $(COMPARE_RUNS) --label after -o after.lpset \
		--throughput-regex '([0-9]+) records/s' -- \
		workloads/bin/lpbizzy -t $(COMPARE_THREADS) -S $(COMPARE_SECONDS) -R
	$(LOCKPROF) compare before.lpset after.lpset -o $(COMPARE_HTML)
	@echo "comparison page: $(abspath $(COMPARE_HTML))  (JSON: $(LOCKPROF) compare before.lpset after.lpset --json)"

# The 2007 scalable rw_mutex as a user-space "patch": rwbench on glibc's
# pthread_rwlock (before) vs workloads/bin/librw_mutex.so (after), each under
# its lock spec (uprobes), PATCH_RUNS runs each; the two spec classes are
# paired so that read, write and the writer's sum compare mode by mode. Then
# one run of each without lockprof, for the throughput the probes hide.
demo-patch: setup
	$(LOCKPROF) bench --runs $(PATCH_RUNS) --label pthread_rwlock -o patch-before.lpset \
		--no-contention --locks pthread_rwlock --throughput-regex '([0-9]+) ops/s' -- \
		workloads/bin/rwbench -l pthread -t $(PATCH_THREADS) -S $(PATCH_SECONDS)
	$(LOCKPROF) bench --runs $(PATCH_RUNS) --label rw_mutex -o patch-after.lpset \
		--no-contention --locks rw_mutex@workloads/bin/librw_mutex.so \
		--throughput-regex '([0-9]+) ops/s' -- \
		workloads/bin/rwbench -l rw_mutex -t $(PATCH_THREADS) -S $(PATCH_SECONDS)
	$(LOCKPROF) compare --pair-class pthread_rwlock=rw_mutex --top 1 \
		patch-before.lpset patch-after.lpset -o $(PATCH_HTML)
	@echo "comparison page: $(abspath $(PATCH_HTML))  (JSON: $(LOCKPROF) compare --pair-class pthread_rwlock=rw_mutex patch-before.lpset patch-after.lpset --json)"
	@echo "throughput without lockprof (uprobes on every lock call slow rwbench down many times):"
	@workloads/bin/rwbench -l pthread -t $(PATCH_THREADS) -S $(PATCH_SECONDS) | sed -n 's/^\([0-9]* ops\/s\)$$/  pthread_rwlock: \1/p'
	@workloads/bin/rwbench -l rw_mutex -t $(PATCH_THREADS) -S $(PATCH_SECONDS) | sed -n 's/^\([0-9]* ops\/s\)$$/  rw_mutex:       \1/p'

# The whole suite, browser tests and the check against bpftrace included:
# setup also installs chromium and bpftrace.
test: SETUP_ARGS = --browser --bpftrace
test: setup
	$(PY) -m pytest -ra tests

test-unit: setup
	$(PY) -m pytest -ra tests/unit

test-integration: setup
	$(PY) -m pytest -ra tests/integration

lint: setup
	$(VENV)/bin/ruff check profiler dashboards tests bench
	$(VENV)/bin/ruff format --check profiler dashboards tests bench
	$(VENV)/bin/mypy profiler

# Every benchmark (about 35 minutes; BENCH_ARGS=--quick for about 8), written
# to docs/performance.md with the date and machine.
bench: setup
	@command -v perf >/dev/null && command -v bpftrace >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf bpftrace >/dev/null
	$(PY) bench/all.py $(BENCH_ARGS)

clean:
	$(MAKE) -C workloads clean
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
