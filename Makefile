# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is rebuilt when any file that defines it changes (the stamp's name is their hash).
INSTALL_INPUTS := constraints.txt requirements.txt setup.py tools/build_detectron2.py
STAMP := $(VENV)/.installed-$(shell cat $(INSTALL_INPUTS) | sha256sum | cut -c1-16)
DEMO_DIR := output/demo
# `make demo` (10-minute budget on 2 CPU cores): the coarse stage through its hook, then the fine stage, one run.
DEMO_CONFIG := configs/fiber_shapes/fiber_tiny_demo.yaml
# `make demo-full` (about 45 min): stage 1 on detection prompts, then stage 2 on all the grounding data.
FULL_DIR := output/demo_full
FULL_STAGE1_CONFIG := configs/fiber_shapes/fiber_tiny_grounding_stage1.yaml
FULL_CONFIG := configs/fiber_shapes/fiber_tiny_grounding.yaml
# Scores are sqrt(label score x centerness). The 10-minute model scores its detections about 0.25-0.35, differently
# from run to run, so the demo draws each image's 8 best (FIBER-Shapes images hold 1-8 objects) above 0.25.
DEMO_THRESHOLD := 0.25
DEMO_MAX_DETECTIONS := 8
# The `make demo-full` model scores its detections about 0.3-0.45.
FULL_THRESHOLD := 0.4
SHAPES_IMAGES = $(DETECTRON2_DATASETS)/fiber_shapes/images/val/*.jpg

export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-quick demo demo-full shapes clean

setup: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	@echo "== make setup: building $(VENV) from constraints.txt (a few minutes on a new machine)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) tools/build_detectron2.py --constraints constraints.txt --cache .cache/detectron2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*
	touch $@
	@echo "== make setup: done"

test: setup
	$(PY) -m pytest tests

test-quick: setup
	$(PY) -m pytest -m "not slow" tests

shapes: setup
	$(PY) tools/make_shapes_dataset.py --root $(DETECTRON2_DATASETS)/fiber_shapes

demo: shapes
	$(PY) projects/FIBER/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_DIR)
	$(PY) projects/FIBER/demo.py --config-file $(DEMO_CONFIG) --input "$(SHAPES_IMAGES)" --max-inputs 8 \
		--confidence-threshold $(DEMO_THRESHOLD) --max-detections $(DEMO_MAX_DETECTIONS) --output $(DEMO_DIR)/visualized \
		--opts MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth
	@echo "== make demo: results in $(DEMO_DIR)/results.json, pictures in $(DEMO_DIR)/visualized/"

demo-full: shapes
	$(PY) projects/FIBER/train_net.py --config-file $(FULL_STAGE1_CONFIG) OUTPUT_DIR $(FULL_DIR)/stage1
	$(PY) projects/FIBER/train_net.py --config-file $(FULL_CONFIG) OUTPUT_DIR $(FULL_DIR) \
		MODEL.WEIGHTS $(FULL_DIR)/stage1/model_final.pth
	$(PY) projects/FIBER/demo.py --config-file $(FULL_CONFIG) --input "$(SHAPES_IMAGES)" --max-inputs 8 \
		--confidence-threshold $(FULL_THRESHOLD) --output $(FULL_DIR)/visualized --opts MODEL.WEIGHTS $(FULL_DIR)/model_final.pth
	@echo "== make demo-full: results in $(FULL_DIR)/results.json, pictures in $(FULL_DIR)/visualized/"

clean:
	rm -rf $(VENV) .cache output
