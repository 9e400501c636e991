# Two commands on a fresh clone: `make run` (a demo instance) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench screenshots clean-demo

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	scripts/demo

# Two processes (pytest-xdist), each test file whole in one of them (its module fixtures:
# a server, a PostgreSQL cluster, a moto server, are started once): TEST_JOBS=1 for one.
TEST_JOBS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The console's pages, photographed by the browser tests into docs/screenshots (needs chromium).
screenshots: $(STAMP)
	AMS_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/e2e/test_console_browser.py

bench: $(STAMP)
	$(BIN)/python -m bench

clean-demo:
	rm -rf .ams-demo
