# lockprof developer entry points. `make demo` and `make test` set up a fresh
# machine first (as root): see scripts/setup.sh.
VENV := .venv
PY := $(VENV)/bin/python
LOCKPROF := $(VENV)/bin/lockprof
DEMO_SECONDS ?= 10
DEMO_OUT ?= demo.lpr
DEMO_HTML ?= demo.html

.PHONY: setup demo test test-unit test-integration lint bench workloads clean

setup:
	@scripts/setup.sh

workloads:
	@$(MAKE) -s -C workloads

# Profile the built-in ebizzy-like workload: live view, recording, summary,
# and the HTML report (self-contained: open it in any browser, offline).
demo: setup
	$(LOCKPROF) run -i 1 -o $(DEMO_OUT) --html $(DEMO_HTML) -- workloads/bin/lpbizzy -t 4 -S $(DEMO_SECONDS)
	@echo "recording: $(DEMO_OUT)  (summarise again with: $(LOCKPROF) show $(DEMO_OUT) [--json])"
	@echo "report: $(abspath $(DEMO_HTML))  (rebuild with: $(LOCKPROF) report $(DEMO_OUT) -o $(DEMO_HTML))"

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

bench: setup
	$(PY) bench/overhead.py

clean:
	$(MAKE) -C workloads clean
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
