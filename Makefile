# The two commands of the README's quick start, `make run` and `make test`, `make bench` and `make soak`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NAME ?= /sysmetrics
INTERVAL ?= 1
SHELL := /bin/bash

.PHONY: run test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# A publisher in the background, the live view in front; q or Ctrl-C stops both and
# the publisher removes its segment and semaphore on the way out.  Ctrl-C is how the
# user ends it, not a failure: the recipe exits 0 then, so make prints no "Error 130".
run: $(VENV)/.installed
	@$(BIN)/shm-publisher --name '$(NAME)' --interval '$(INTERVAL)' & pub=$$!; \
	trap 'kill -TERM $$pub 2>/dev/null; wait $$pub' EXIT; \
	trap 'exit 0' INT TERM; \
	for _ in $$(seq 50); do [ -e /dev/shm/$(patsubst /%,%,$(NAME)) ] && break; \
	  kill -0 $$pub 2>/dev/null || exit 1; sleep 0.1; done; \
	$(BIN)/shm-read --name '$(NAME)'

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The speed targets (issue 4), each measured against a peer in the same run: a few minutes on 2 cores.
# Tables on stdout and in bench/results/latest.md (bench/README.md explains them); BENCH_ARGS=--quick for a
# smoke run, BENCH_ARGS='--only 1,6' for some questions.
bench: $(VENV)/.installed
	$(BIN)/python -m bench --out bench/results/latest.md $(BENCH_ARGS)

# Memory and descriptors of every process under steady load (issue 15): minutes, not part of `make test`.
# A 100 Hz publisher, shm-exporter hammered by two keep-alive scrapers (plain, gzip), three followers; a row of
# RSS and fds per process every SOAK_EVERY s; fails if RSS rose more than SOAK_BOUND MiB after SOAK_WARMUP s, or
# fds rose.  SOAK_SECONDS=300 by default; SOAK_SCRAPES=1000000 runs by scrape count (bench/README.md).
soak: $(VENV)/.installed
	$(BIN)/python -m bench.soak

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
