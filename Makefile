# The two commands of the README's quick start, `make run` and `make test`, and `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NAME ?= /sysmetrics
INTERVAL ?= 1
SHELL := /bin/bash

.PHONY: run test lint bench clean

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

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
