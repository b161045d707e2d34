# Every target installs what it needs: a fresh clone needs only Python 3.11, Java 17 and Maven.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The runtime dependencies come from the image's lock file (hash-checked, the same
# versions the image runs); the package and its dev tools on top.
# `pip install -e` also compiles the core (setup.py: mypyc; STREAM_COMPILE=0 builds plain Python).
$(STAMP): pyproject.toml setup.py requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes --no-deps --only-binary :all: -r requirements.lock
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its pinned dependencies

# The core's extensions again after an edit of stream/core (`stream` refuses to import
# extensions built from other sources: stream/__init__.py).
CORE_BUILT := stream/core/COMPILED
# After $(STAMP) (order only: its install compiled the core already).
$(CORE_BUILT): setup.py $(wildcard stream/core/*.py) | $(STAMP)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

compile: $(CORE_BUILT) ## compile stream/core with mypyc again after an edit (STREAM_COMPILE=0: plain Python)

broker: ## start the local Kafka broker (fetched from Maven Central once)
	scripts/kafka.sh start

broker-stop: ## stop the local Kafka broker
	scripts/kafka.sh stop

run: compile ## broker, topics, worker, a synthetic workload and live counts by reason (Ctrl-C stops)
	scripts/demo.sh

# By hand, never in `make test`: a two-minute session like `make run` on topics of its own,
# its evidence report, and Debian's Chromium (apt-get install -y chromium) rendering it.
evidence-screenshot: install ## by hand: a short demo session, its evidence report, rendered to docs/evidence-report.png
	scripts/evidence_screenshot.sh

.PHONY: evidence-screenshot

# The tests start the local broker themselves (scripts/kafka.sh) unless one answers
# at KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092); under CI=true a broker that
# does not start fails the run.
test: compile check prometheus helm ## the whole suite: linters, strict mypy, unit, integration and fault tests on a real broker, the Helm chart
	$(PY) -m pytest

check: install ## linters, strict mypy and the import contracts of the layout
	$(VENV)/bin/ruff check stream tests dashboards bench scripts
	$(VENV)/bin/ruff format --check stream tests dashboards bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The fault-injection suite, then the model-based and fuzz tests with their long
# hypothesis profile (many more examples and steps than the CI profile of `make test`).
faults: compile check ## the fault-injection suite alone (also part of `make test`) and the long model/fuzz/assignor/lifecycle search; rewrites docs/reliability.md
	RELIABILITY_REPORT=1 $(PY) -m pytest tests/faults -v
	HYPOTHESIS_PROFILE=long $(PY) -m pytest tests/unit/test_engine_model.py tests/unit/test_fuzz.py tests/unit/test_assignor.py \
		tests/integration/test_core_build.py::test_compiled_core_decides_hostile_batches_exactly_as_its_sources \
		tests/integration/test_lifecycle.py

# By hand, never in `make test` or CI (about 12 minutes). Without the default
# CHAOS_ARGS the docs are left alone: `make chaos CHAOS_ARGS="--minutes 1"` for a short try.
CHAOS_ARGS ?= --docs docs/reliability.md
chaos: compile ## by hand, not in `make test`: 3 workers, 10 min of load, duplicates, reorders, a fault 20-40 s after the last, the verifier; rewrites its section of docs/reliability.md
	scripts/kafka.sh start
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

# `--fresh`: the page shows this run alone, not earlier results of other sizes or code. The
# objection benchmark runs at 80 % of the sustainable rate that `bench all` just recorded in
# bench/results/results.json and records its result there; the report is rendered again so
# that the targets table has it, after a leak too (make then fails with the objection run's status).
bench: compile jemalloc ## the benchmarks and their targets (docs/benchmarks.md), on a quiet machine; long: see bench/run.py for options
	scripts/kafka.sh start
	$(PY) -m bench all --fresh
	status=0; $(PY) -m bench.objections || status=$$?; $(PY) -m bench.rebalance || status=$$?; \
		$(PY) -m bench report && exit $$status

# The Helm chart (deploy/helm/eligibility-filter, docs/deploy.md) is tested without a
# cluster: helm lint, helm template for several value sets, every object validated
# against the Kubernetes schemas (tests/deploy/test_helm.py, part of `make test`). helm
# is built once from the Go module proxy (a few minutes on a new machine) and cached
# in ~/.cache/eligibility-filter.
helm: ## build helm from the Go module proxy into ~/.cache/eligibility-filter if missing
	scripts/helm.sh >/dev/null

chart: install ## copy deploy/prometheus/rules.yml, dashboards/*.json and the topic specs into the Helm chart
	$(PY) scripts/sync_chart.py

chart-check: install helm ## the Helm chart alone: lint, template for several value sets, schema validation
	$(PY) -m pytest tests/deploy -q

.PHONY: helm chart chart-check

prometheus: ## install prometheus and promtool (Debian's package) if missing
	scripts/install-prometheus.sh

jemalloc: ## install jemalloc (Debian's libjemalloc2), the image's allocator, if missing: the benchmark measures on it
	scripts/install-jemalloc.sh

dashboards: install ## regenerate dashboards/*.json from dashboards/build.py
	$(PY) dashboards/build.py

# The image's lock files (Dockerfile): the runtime dependencies of pyproject.toml and
# everything they pull in, and the build backend of build-system.requires, each pinned
# with the hashes of its files on PyPI. Resolved for the image (CPython 3.11, linux
# x86_64, wheels only) whatever machine runs this; uv keeps the versions already locked
# unless LOCK_ARGS=--upgrade. tests/unit/test_lockfile.py fails when the locks and
# pyproject.toml disagree.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --only-binary :all:
LOCK_ARGS ?=
lock: install ## regenerate requirements.lock and requirements-build.lock (the image's pins, with hashes) from pyproject.toml
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes $(LOCK_TARGET) $(LOCK_ARGS) \
		--custom-compile-command "make lock" --quiet -o requirements.lock
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(VENV)/bin/uv pip compile - --generate-hashes $(LOCK_TARGET) $(LOCK_ARGS) \
		--custom-compile-command "make lock" --quiet -o requirements-build.lock

clean: ## remove the virtualenv, local state and the broker's data
	-scripts/kafka.sh reset
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache build stream/core/COMPILED stream/core/*.so stream_core__mypyc*.so

# compile: a file target when compiling (CORE_BUILT), and run again by each target needing it.
.PHONY: help install compile broker broker-stop run test check faults chaos bench prometheus jemalloc dashboards lock clean
