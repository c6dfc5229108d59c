# rsicrc — the two commands of the README, plus helpers.
#   make demo [SEED=0] [OUT=demo-out]   environment + synthetic data + train tiny + evaluate (+ export, caption)
#   make test                           environment + lint + the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SEED ?= 0
OUT ?= demo-out
PAIRS ?= 2000
DEMO_MINUTES ?= 8
SHARED ?= ../shared
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint demo clean

# torch 2.14.1 + torchvision 0.29.1 is the pair open_clip needs on our machines (DESIGN §11);
# the deployed side installs without torch: pip install 'rsicrc[cpu]' (or [gpu]).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[cpu,train,sentence,dev]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q

demo: $(STAMP)
	mkdir -p $(OUT)
	rm -rf $(OUT)/data $(OUT)/checkpoint
	$(BIN)/rsicrc synth --out $(OUT)/data --pairs $(PAIRS) --seed $(SEED)
	$(BIN)/rsicrc-train --config tiny --data $(OUT)/data --out $(OUT)/checkpoint \
		--seed $(SEED) --max-minutes $(DEMO_MINUTES)
	$(BIN)/rsicrc evaluate $(OUT)/checkpoint --data $(OUT)/data --split test --beam 3 \
		--out $(OUT)/metrics.json

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache *.egg-info
