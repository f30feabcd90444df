# The README's two commands: `make demo` and `make test`. Both build .venv when absent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := $(wildcard asynctrain tests examples benchmarks)

.PHONY: demo test lint typecheck unit oldest docs bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cli]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/asynctrain demo

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

# Two test processes (pytest-xdist): the suite's tests wait on pools, clusters and
# sleeps as much as they compute, so on 2 cores two at a time finish in 8 minutes, not 12.
# JOBS=1 runs them in this process.
JOBS ?= 2

unit: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 1,$(JOBS)),,-n $(JOBS))

test: lint typecheck unit

# A subset of the tests on the oldest versions pyproject.toml allows (.ci/floors.py pins
# each floor), in a venv of its own: a floor the code has outgrown fails here.
OLDEST := .venv-oldest
OLDEST_TESTS := tests/test_backends.py tests/test_data.py tests/test_flat.py \
	tests/test_optim.py tests/test_process_backend.py tests/test_sklearn.py \
	tests/test_trainer.py tests/test_weights.py

oldest:
	test -d $(OLDEST) || $(PYTHON) -m venv $(OLDEST)
	$(PYTHON) .ci/floors.py > $(OLDEST)/floors.txt
	$(OLDEST)/bin/python -m pip install --quiet -r $(OLDEST)/floors.txt
	$(OLDEST)/bin/python -m pip install --quiet --no-deps -e .
	$(OLDEST)/bin/python -m pip check
	$(OLDEST)/bin/python -m pytest -p no:cacheprovider $(OLDEST_TESTS)

DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

# The docs site, with every warning an error; output in site/ (not committed).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The full benchmark (about 8 minutes on 2 cores); peers need `pip install -e '.[bench]'`.
bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/asynctrain bench --json bench.json --plot bench-plots

clean:
	rm -rf $(VENV) $(OLDEST) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache
