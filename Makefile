SHELL := /bin/bash
# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv themselves; nothing has to be installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check --no-warn-script-location

.PHONY: venv demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PIP) -e '.[dev]' 2>&1 | grep -v "is ignored" ; test $${PIPESTATUS[0]:-0} = 0
	$(BIN)/python -c "import mscn_geo.models, rasterio, torch"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mscn-geo classify sample_data/synthetic_scene.tif --out out/demo --overwrite
	@echo "outputs: $$(ls -d $$PWD/out/demo/*)"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not cuda" -q -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mscn_geo cli tests benchmarks scripts
	$(BIN)/ruff format --check mscn_geo cli tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out benchmarks/results

clean:
	rm -rf $(VENV) out build *.egg-info
