# mobilesign: `make demo` and `make test` are the two commands a newcomer needs; both set up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/mobilesign/v1/*.proto)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup proto lint test demo demo-postgres run bench soak fuzz clean

setup: .debian-packages $(VENV)/.installed $(BUF)

# What set-up and the services need from Debian, installed first when missing (apt-get, as
# root or through sudo): python3-venv for the virtual environment, nodejs and npm for buf,
# softhsm2 for the PKCS#11 module the HSM proxy loads, openssl, postgresql for the server
# the tests, `make demo-postgres` and `make bench` start in a temporary directory (the
# machine's own PostgreSQL service is neither started nor used), and curl and jq for the
# README's CSC example (which a test runs). The list is here, so the stamp depends on this
# file too: a checkout whose list grew installs what it added.
.debian-packages: scripts/ensure-debian-packages.sh Makefile
	@scripts/ensure-debian-packages.sh python3-venv nodejs npm softhsm2 openssl postgresql curl jq
	@touch $@

$(VENV)/.installed: pyproject.toml | .debian-packages
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

$(BUF): .tools/package.json | .debian-packages
	cd .tools && npm ci --silent --no-fund --no-audit
	@touch $@

proto: $(VENV)/.installed
	$(PY) -m scripts.gen_protos

# buf breaking compares protos/ with the commit before it: HEAD's when protos/ has changes not
# yet committed, else HEAD~1's (a clean clone checks its last commit). Without that commit (a
# single commit, a shallow clone, no git) it says so and skips.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(BUF) lint protos
	@if [ -n "$$(git status --porcelain -- protos 2>/dev/null)" ]; then ref=HEAD; else ref=HEAD~1; fi; \
	if git rev-parse --quiet --verify "$$ref^{commit}" >/dev/null 2>&1; then \
	  echo "$(BUF) breaking protos --against '.git#ref=$$ref,subdir=protos'"; \
	  $(BUF) breaking protos --against ".git#ref=$$ref,subdir=protos"; \
	else \
	  echo "buf breaking: skipped, no commit $$ref to compare protos/ with"; \
	fi

test: setup lint
	$(PY) -m pytest -q

demo: setup
	$(PY) -m scripts.demo

# The same flow with every service's state in PostgreSQL (a server started for it).
demo-postgres: setup
	$(PY) -m scripts.demo --postgres

# Every service in the foreground, configured as they document it: MOBILESIGN_CONFIG and any
# MOBILESIGN_<SECTION>_<KEY>, in the environment or on make's command line, reach them.
run: setup
	$(PY) -m scripts.run_all

# strace counts the services' fsyncs; without it the bench says they were not measured.
bench: setup
	@scripts/ensure-debian-packages.sh strace || echo "bench: strace not installed, fsyncs will not be measured"
	$(PY) -m scripts.bench

# The long property-based fuzz of every RPC (at least 10^5 cases; `make test` runs a small one).
fuzz: setup
	$(PY) -m tests.fuzz

# 64 clients for 5 minutes, each service's memory every 10 s and its slope (SOAK_ARGS to change).
soak: setup
	$(PY) -m scripts.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .tools/node_modules .debian-packages var demo-out .mypy_cache .ruff_cache .pytest_cache
