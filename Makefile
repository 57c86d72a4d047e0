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

# A real aerial scene (sample_data/README.md), tiles overlapping by 3/4 (stride
# T/4 = 64 px of the model's 256 px tiles): 169 tiles, about a minute on 2 CPU cores.
DEMO_SCENE := sample_data/aerial_rgb_025m.tif

demo: $(STAMP)
	$(BIN)/mscn-geo classify $(DEMO_SCENE) --stride 64 --out out/demo --overwrite
	@echo "picture: $$PWD/out/demo/$$(basename $(DEMO_SCENE) .tif)_quicklook.png"

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
