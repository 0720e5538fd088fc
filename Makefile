# cohortctl — set-up and everyday commands. `make demo` and `make test` need only Python 3.11+ and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= out/demo
SEED   ?= 0

.PHONY: demo test test-fast test-slow lint bench bench-smoke validate browser-deps clean help

help:
	@echo "make demo        install into $(VENV) and run ingest -> cluster -> report on sample_data/"
	@echo "make test        install test extras and run the whole test suite"
	@echo "make test-fast   the suite without slow (fault-injection, browser) tests"
	@echo "make bench       benchmarks at cohort scale -> docs/benchmarks.md"
	@echo "make bench-smoke small-size benchmark run"
	@echo "make validate    model selection across datasets and seeds -> docs/validation.md"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# Byte-compile now: environments with PYTHONDONTWRITEBYTECODE would otherwise
	@# recompile the scientific stack (~5 s) on every cohortctl invocation.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(BIN)/cohortctl ingest -o $(OUT)/breast.cohort --force \
	    --clinical sample_data/breast_tcga/clinical.parquet \
	    --molecular mrna=sample_data/breast_tcga/mrna_train.parquet \
	    --molecular mirna=sample_data/breast_tcga/mirna_train.parquet \
	    --molecular protein=sample_data/breast_tcga/protein_train.parquet \
	    --reference subtype \
	  | $(BIN)/cohortctl cluster --seed $(SEED) \
	  | $(BIN)/cohortctl report --force -o $(OUT)/report.html
	@echo "Report: $(OUT)/report.html"

# Headless Chromium for the report's browser test, from Debian's packages (root only).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped" >&2; \
	  else echo "note: chromium not found; browser tests will be skipped (CI installs it)" >&2; fi; }

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check cohortctl tests bench

bench: $(STAMP)
	@# The bench extra (scanpy, leidenalg, igraph), once per pyproject.toml version;
	@# bench/run.py installs R's ConsensusClusterPlus from Debian's packages when root.
	@test -f $(subst .installed-,.bench-installed-,$(STAMP)) || { \
	  $(BIN)/python -m pip install --quiet -e '.[bench]' && rm -f $(VENV)/.bench-installed-* \
	  && touch $(subst .installed-,.bench-installed-,$(STAMP)); }
	$(BIN)/python bench/run.py --out docs/benchmarks.md $(BENCH_ARGS)

bench-smoke: $(STAMP)
	@test -f $(subst .installed-,.bench-installed-,$(STAMP)) || { \
	  $(BIN)/python -m pip install --quiet -e '.[bench]' && rm -f $(VENV)/.bench-installed-* \
	  && touch $(subst .installed-,.bench-installed-,$(STAMP)); }
	$(BIN)/python bench/run.py --smoke --out out/bench-smoke.md $(BENCH_ARGS)

validate: $(STAMP)
	@mkdir -p out
	$(BIN)/python bench/validate.py --out docs/validation.md --labels-out out/validation.json --seeds $(or $(SEEDS),0-9) $(VALIDATE_ARGS)

clean:
	rm -rf out .pytest_cache
