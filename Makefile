# `make` lists the targets. `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# `make run` serves this machine only; HOST=0.0.0.0 opens it to the network (the Procfile's default).
HOST ?= 127.0.0.1

.DEFAULT_GOAL := help
.PHONY: help run test lint bench example clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-7s %s\n", $$1, $$2}'

$(BIN)/gunicorn: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev: $(BIN)/gunicorn requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@

# The service itself says where it listens, once its settings passed (a password in REDIS_URL hidden).
run: $(BIN)/gunicorn  ## start the service on $PORT (memory backend unless REDIS_URL is set)
	@HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m signaling

test: $(VENV)/.dev  ## run every test: contract on both backends, live server, browser, client
	@.ci/system-packages
	$(BIN)/python -m pytest
	@if [ -d tests/js ]; then node --test --test-timeout=60000 tests/js/; fi

bench: $(VENV)/.dev  ## benchmark the floor, held polls and streams, ping-pong and throughput (polling and streaming), call set-ups (QUICK=1: a few minutes; WRITE=docs/benchmarks.md)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(if $(WRITE),--write $(WRITE)) $(BENCH_ARGS)

# The example's own dependency, at the version requirements-dev.txt pins for its tests (one pin, one place).
AIORTC = $(shell grep -E '^aiortc==' requirements-dev.txt)
$(VENV)/.example: $(BIN)/gunicorn requirements-dev.txt
	$(BIN)/pip install --quiet "$(AIORTC)"
	@touch $@

example: $(VENV)/.example  ## install aiortc, then run examples/aiortc_peer.py in ROOM (default myroom) against $PORT
	$(BIN)/python -m examples.aiortc_peer $(or $(ROOM),myroom) --url http://localhost:$(PORT)

lint: $(VENV)/.dev  ## ruff
	$(BIN)/ruff check .

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
