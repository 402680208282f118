# invledger — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# `make run` reads every setting of contract §2 from the environment (LEDGER_PORT=9000 make run), or from the
# make command line (make run LEDGER_PORT=9000): make passes both to the recipe as they are.
PYTEST_ARGS ?=

.PHONY: help install browser pdftools docs-images openapi pgbouncer run soak test test-slow test-all test-cluster test-restore bench lint fmt migrate verify clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# What serving needs and nothing else: `make run` installs no test-only package (a venv that `make test` filled
# keeps them; .ci/run checks a serving-only install has none).
$(RUN_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(RUN_STAMP)

install: $(STAMP) browser pdftools  ## create .venv and install the project with its test tools

# The page tests drive Debian's chromium headless; installed here when missing and we may (root + apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }; }; } || \
	  echo "chromium is not installed: the browser test will be skipped (apt-get install chromium)"

# The statement tests read the PDFs with poppler's pdftotext and pdftoppm (Debian's poppler-utils), installed here
# when missing and we may (root + apt).
pdftools:
	@command -v pdftotext >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends poppler-utils >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends poppler-utils; }; }; } || \
	  echo "poppler-utils is not installed: the statement PDF tests will fail (apt-get install poppler-utils)"

# The cluster tests put Debian's PgBouncer (transaction pooling) in front of their own PostgreSQL; installed here when
# missing and we may (root + apt), as the browser is.
pgbouncer:  ## install Debian's pgbouncer (the cluster tests' pooler) when missing
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer; }; }; } || \
	  { echo "pgbouncer is not installed and cannot be here: apt-get install pgbouncer" >&2; exit 1; }

run: $(RUN_STAMP)  ## embedded PostgreSQL, migrate, serve on LEDGER_HOST:LEDGER_PORT (DEMO=1 adds the engine simulator)
	$(BIN)/invledger serve $(if $(DEMO),--demo,)

test: $(STAMP) browser pdftools  ## the suite without the slow suites, on a real PostgreSQL (embedded unless DATABASE_URL is set)
	$(BIN)/python -m pytest -m 'not slow' --durations=15 $(PYTEST_ARGS)

test-slow: $(STAMP) browser pdftools  ## the slow suites alone: kill -9, database and engine faults, several instances, CLI finance questions, a 5-minute soak
	SOAK_SECONDS=$${SOAK_SECONDS:-300} $(BIN)/python -m pytest -m 'slow and not cluster and not restore' --durations=15 $(PYTEST_ARGS)

test-all: $(STAMP) browser pdftools  ## test and test-slow in one run (the cluster and restore suites are test-cluster's and test-restore's)
	SOAK_SECONDS=$${SOAK_SECONDS:-300} $(BIN)/python -m pytest -m 'not cluster and not restore' --durations=15 $(PYTEST_ARGS)

test-cluster: $(STAMP) pgbouncer  ## primary + standby: failover under load (sync and async), reports from a replica, PgBouncer; about 5 min
	$(BIN)/python -m pytest -m cluster -s --durations=15 $(PYTEST_ARGS)

test-restore: $(STAMP)  ## backup, then point-in-time restore into a new directory: verify clean, the books exactly as at T
	$(BIN)/python -m pytest -m restore -s --durations=15 $(PYTEST_ARGS)

soak: $(STAMP)  ## the 10-minute soak alone (SOAK_SECONDS to change it); prints its figures as JSON
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/python -m pytest -s -m soak tests/reliability/test_soak.py

docs-images: $(STAMP) browser pdftools  ## the statement PDF page and the positions page as PNGs in docs/images (a test makes them)
	INVLEDGER_DOCS_IMAGES=docs/images $(BIN)/python -m pytest -q tests/api/test_statements_browser.py $(PYTEST_ARGS)

openapi: $(STAMP)  ## rewrite docs/openapi.json from the app (a test holds the app to it: its diff is the API change to review)
	INVLEDGER_WRITE_OPENAPI=1 $(BIN)/python -m pytest -q tests/api/test_openapi.py -k docs $(PYTEST_ARGS)

bench: $(STAMP)  ## benchmarks; QUICK=1 for the short run; writes bench/results.json
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

fmt: $(STAMP)
	$(BIN)/ruff format .

migrate: $(STAMP)  ## apply database migrations
	$(BIN)/invledger migrate

verify: $(STAMP)  ## recompute every balance from postings and check every invariant
	$(BIN)/invledger verify

clean:  ## remove the virtualenv and local state (the embedded database too)
	rm -rf $(VENV) .ledger .pytest_cache .hypothesis
