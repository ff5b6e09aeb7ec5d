# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is rebuilt when any file that defines it changes (the stamp's name is their hash).
INSTALL_INPUTS := constraints.txt requirements.txt setup.py tools/build_detectron2.py
STAMP := $(VENV)/.installed-$(shell cat $(INSTALL_INPUTS) | sha256sum | cut -c1-16)
DEMO_DIR := output/demo
DEMO_STAGE1_CONFIG := configs/fiber_shapes/fiber_tiny_grounding_stage1.yaml
DEMO_CONFIG := configs/fiber_shapes/fiber_tiny_grounding.yaml
# Scores are sqrt(label score x centerness); the demo's model scores its detections about 0.3-0.45, so draw from 0.4.
DEMO_THRESHOLD := 0.4

export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-quick demo clean

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

demo: setup
	$(PY) tools/make_shapes_dataset.py --root $(DETECTRON2_DATASETS)/fiber_shapes
	$(PY) projects/FIBER/train_net.py --config-file $(DEMO_STAGE1_CONFIG) OUTPUT_DIR $(DEMO_DIR)/stage1
	$(PY) projects/FIBER/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_DIR) \
		MODEL.WEIGHTS $(DEMO_DIR)/stage1/model_final.pth
	$(PY) projects/FIBER/demo.py --config-file $(DEMO_CONFIG) \
		--input "$(DETECTRON2_DATASETS)/fiber_shapes/images/val/*.jpg" --max-inputs 8 --confidence-threshold $(DEMO_THRESHOLD) \
		--output $(DEMO_DIR)/visualized --opts MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth
	@echo "== make demo: results in $(DEMO_DIR)/results.json, pictures in $(DEMO_DIR)/visualized/"

clean:
	rm -rf $(VENV) .cache output
