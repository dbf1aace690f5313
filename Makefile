# flask-dicom-inbox: `make run` for the demo, `make test` for the suite, `make lint` for checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv run test test-fast lint format bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,lint]"
	touch $@

run: venv
	PYTHON=$(PY) bash scripts/run.sh

test: venv
	bash scripts/ensure-chromium.sh
	PYTHON=$(PY) bash scripts/with-redis.sh $(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	PYTHON=$(PY) bash scripts/with-redis.sh $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	PYTHON=$(PY) bash scripts/with-redis.sh $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
