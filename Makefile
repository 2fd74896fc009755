# mediagen: every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test protos lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 0.0.0.0:50051 with the offline mock providers (no keys, no network).
run: $(STAMP)
	$(VENV)/bin/mediagen-server

## Run the whole test suite.
test: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(PY) -m pytest -q

## Regenerate the committed Python stubs from protos/.
protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) scripts/gen_protos.py --check

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
