# rsicrc — the two commands of the README, plus helpers.
#   make demo [SEED=0] [OUT=demo-out]   environment + synthetic data + train tiny + evaluate (+ export, caption,
#                                       search, a whole scene)
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
DEMO_MINUTES ?= 9
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
	rm -rf $(OUT)/data $(OUT)/checkpoint $(OUT)/model $(OUT)/index $(OUT)/scene
	@echo "== 1/7 synthesize $(PAIRS) pairs (seed $(SEED))"
	$(BIN)/rsicrc synth --out $(OUT)/data --count $(PAIRS) --seed $(SEED)
	@echo "== 2/7 train the tiny config on CPU (at most $(DEMO_MINUTES) minutes)"
	$(BIN)/rsicrc-train --config tiny --data $(OUT)/data --out $(OUT)/checkpoint \
		--seed $(SEED) --max-minutes $(DEMO_MINUTES)
	@echo "== 3/7 evaluate on the synthetic test split (PyTorch, beam 3)"
	$(BIN)/rsicrc evaluate $(OUT)/checkpoint --data $(OUT)/data --split test --beam 3 \
		--out $(OUT)/metrics.json
	$(PY) scripts/demo_show.py targets $(OUT)/metrics.json
	@echo "== 4/7 export to ONNX (validated against PyTorch)"
	$(BIN)/rsicrc export $(OUT)/checkpoint --out $(OUT)/model --data $(OUT)/data
	@echo "== 5/7 caption with the torch-free runtime"
	@pair=$$(ls $(OUT)/data/images/test/A | sed -n 1p); \
	echo "held-out synthetic pair $$pair:"; \
	$(BIN)/rsicrc caption $(OUT)/data/images/test/A/$$pair $(OUT)/data/images/test/B/$$pair --model $(OUT)/model; \
	echo "references:"; \
	$(PY) scripts/demo_show.py references $(OUT)/data/LevirCCcaptions.json test $$pair
	@if [ -d $(SHARED)/data/levircc/samples ]; then \
		echo "real LEVIR-CC sample pairs ($(SHARED)/data/levircc/samples):"; \
		$(BIN)/rsicrc caption --pairs $(SHARED)/data/levircc/samples --model $(OUT)/model \
			--out $(OUT)/levircc_samples.jsonl --quiet; \
		$(PY) scripts/demo_show.py captions $(OUT)/levircc_samples.jsonl; \
	else echo "($(SHARED)/data/levircc/samples not found: real sample pairs skipped)"; fi
	@echo "== 6/7 index the synthetic test split and search it by text (top 5)"
	$(BIN)/rsicrc index $(OUT)/data --split test --model $(OUT)/model --out $(OUT)/index --quiet
	$(PY) scripts/demo_show.py queries $(SHARED)/data/levircc/LevirCCcaptions.json > $(OUT)/queries.txt
	$(BIN)/rsicrc search --index $(OUT)/index --model $(OUT)/model --queries $(OUT)/queries.txt --top-k 5
	@echo "== 7/7 caption a whole scene: an 8x8-tile synthetic GeoTIFF pair (UTM 32N, 0.5 m, 2,048 px)"
	$(BIN)/rsicrc synth-scene --out $(OUT)/scene --rows 8 --cols 8 --seed $(SEED) --quiet
	$(BIN)/rsicrc scene $(OUT)/scene/before.tif $(OUT)/scene/after.tif --model $(OUT)/model \
		--out $(OUT)/scene/changes.geojson --quicklook $(OUT)/scene/changes.png --quiet
	@$(PY) -c 'import json, sys; t = json.load(open(sys.argv[1])); print("truth:", len(t["changed_tiles"]), "of", len(t["tiles"]), "tiles changed")' $(OUT)/scene/truth.json
	@echo "metrics: $(OUT)/metrics.json   model: $(OUT)/model   index: $(OUT)/index"
	@echo "scene features: $(OUT)/scene/changes.geojson   quick-look: $(OUT)/scene/changes.png"

# benchmarks (benchmarks/README.md), BENCH_ARGS e.g. "--tiny-checkpoint CKPT --data DATA";
# order-only on the venv: a benchmark never reinstalls the environment it measures
BENCH_ARGS ?=
.PHONY: bench bench-quick
bench: | $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-quick: | $(STAMP)
	$(PY) -m benchmarks.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache *.egg-info
