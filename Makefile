# Every target installs what it needs: a fresh clone needs only Python 3.11, Java 17 and Maven.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its pinned dependencies

broker: ## start the local Kafka broker (fetched from Maven Central once)
	scripts/kafka.sh start

broker-stop: ## stop the local Kafka broker
	scripts/kafka.sh stop

run: install ## broker, topics, worker, a synthetic workload and live counts by reason (Ctrl-C stops)
	scripts/demo.sh

test: check prometheus ## the whole suite: linters, strict mypy, unit tests, then integration tests against the real broker
	scripts/kafka.sh start
	$(PY) -m pytest

check: install ## linters and strict mypy
	$(VENV)/bin/ruff check stream tests dashboards
	$(VENV)/bin/mypy

prometheus: ## install prometheus and promtool (Debian's package) if missing
	scripts/install-prometheus.sh

dashboards: install ## regenerate dashboards/*.json from dashboards/build.py
	$(PY) dashboards/build.py

clean: ## remove the virtualenv, local state and the broker's data
	-scripts/kafka.sh reset
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install broker broker-stop run test check prometheus dashboards clean
