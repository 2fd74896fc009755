# mediagen: every target installs what it needs on first use (Python packages
# into .venv, buf from the npm registry into tools/node_modules).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := tools/node_modules/.bin/buf

.PHONY: install run test protos lint bench clean proto-baseline docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --silent --no-audit --no-fund
	touch $(BUF)

install: $(STAMP)

## Serve on 0.0.0.0:50051 with the offline mock providers (no keys, no network).
run: $(STAMP)
	$(VENV)/bin/mediagen-server

## Lint the contract and code, then run the whole test suite.
test: lint
	$(PY) -m pytest -q

## Regenerate the committed Python stubs from protos/.
protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP) $(BUF)
	$(BUF) lint
	$(BUF) breaking protos --against protos/baseline.binpb
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) scripts/gen_api_docs.py --check

## Freeze the contract as released: `buf breaking` compares protos/ with this image.
## Run only when a version is released (see README, Decisions).
proto-baseline: $(BUF)
	$(BUF) build protos --exclude-source-info -o protos/baseline.binpb

## Regenerate docs/api.md from the protos and the error classes.
docs: $(STAMP)
	$(PY) scripts/gen_api_docs.py

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache tools/node_modules clients/node/node_modules clients/node/dist
