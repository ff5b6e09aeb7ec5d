# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The venv is rebuilt when any file that defines it changes (the stamp's name is their hash).
INSTALL_INPUTS := constraints.txt requirements.txt setup.py tools/build_detectron2.py
STAMP := $(VENV)/.installed-$(shell cat $(INSTALL_INPUTS) | sha256sum | cut -c1-16)
# `make demo` (2 to 3 minutes on 2 CPU cores): the FIBER-Shapes model zoo (MODEL_ZOO.md) evaluated and drawn.
DEMO_DIR := output/demo
# `make demo-train` (about 5 minutes on 2 CPU cores): FIBER-tiny trained from random weights, the coarse stage
# through its hook, then the fine stage, in one run; its numbers are printed next to the zoo detector's.
TRAIN_DIR := output/demo_train
TRAIN_CONFIG := configs/fiber_shapes/fiber_tiny_demo.yaml
# Scores are sqrt(label score x centerness). The 10-minute model scores its detections about 0.25-0.35, differently
# from run to run, so demo-train draws each image's 8 best (FIBER-Shapes images hold 1-8 objects) above 0.25.
TRAIN_THRESHOLD := 0.25
TRAIN_MAX_DETECTIONS := 8
# `make zoo`: the commands that trained the zoo's models (MODEL_ZOO.md gives their times).
ZOO_DIR := output/zoo
ZOO_CONFIGS := configs/fiber_shapes/zoo
ZOO_WEIGHTS := model_zoo/fiber_shapes
SHAPES_IMAGES = $(DETECTRON2_DATASETS)/fiber_shapes/images/val/*.jpg
SHAPES_META = $(DETECTRON2_DATASETS)/fiber_shapes/meta.json

export DETECTRON2_DATASETS ?= $(CURDIR)/datasets
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-quick demo demo-train zoo shapes clean

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

# The model-zoo tests read the default FIBER-Shapes (its tokenizer is the zoo models').
test: shapes
	$(PY) -m pytest tests

test-quick: shapes
	$(PY) -m pytest -m "not slow" tests

# FIBER-Shapes is (re)generated when it is missing or the generator changed since it was written; the tool itself
# skips a dataset made with the same parameters.
shapes: $(SHAPES_META)

$(SHAPES_META): $(STAMP) tools/make_shapes_dataset.py $(wildcard fiber_d2/data/shapes/*.py)
	$(PY) tools/make_shapes_dataset.py --root $(DETECTRON2_DATASETS)/fiber_shapes
	touch $@

demo: shapes
	$(PY) tools/zoo_demo.py --output $(DEMO_DIR)
	@echo "== make demo: results in $(DEMO_DIR)/results.md, pictures in $(DEMO_DIR)/*.png"

demo-train: shapes
	$(PY) projects/FIBER/train_net.py --config-file $(TRAIN_CONFIG) OUTPUT_DIR $(TRAIN_DIR)
	$(PY) projects/FIBER/demo.py --config-file $(TRAIN_CONFIG) --input "$(SHAPES_IMAGES)" --max-inputs 8 \
		--confidence-threshold $(TRAIN_THRESHOLD) --max-detections $(TRAIN_MAX_DETECTIONS) \
		--output $(TRAIN_DIR)/visualized --opts MODEL.WEIGHTS $(TRAIN_DIR)/model_final.pth
	$(PY) tools/zoo_demo.py --compare $(TRAIN_DIR)/results.json
	@echo "== make demo-train: results in $(TRAIN_DIR)/results.json, pictures in $(TRAIN_DIR)/visualized/"

# The detector: stage 1 (coarse stage through its hook, then detection prompts), then stages 2 and 3 (all grounding
# data, the second a longer continuation of the first), each from the previous stage's weights.
# The image-level models, on 10,000 generated training images (ZOO_DATA; its validation images are the default
# FIBER-Shapes ones) and the default FIBER-Shapes tokenizer: the Swin pretrained alone (3000 iterations, then 3250 of
# a 12000-iteration continuation), the coarse stage (ITC, ITM, MLM), then VQA and captioning from the coarse stage's
# 2000-iteration checkpoint at 192 px, each exported, continued from its export on a new schedule, then fine-tuned at
# 256 px (the zoo configs' size; VQA on two schedules in a row); the coarse stage too is exported and continued at
# 192 px, then at 256 px with word-swap ITM negatives (the retrieval model). The last command evaluates the exports.
ZOO_DATA := $(CURDIR)/output/datasets_10k
ZOO_TRAIN = DETECTRON2_DATASETS=$(ZOO_DATA) $(PY) projects/FIBER/train_net.py
ZOO_TOKENIZER = MODEL.FIBER.TOKENIZER $(DETECTRON2_DATASETS)/fiber_shapes/tokenizer
# The first VQA and captioning runs: 192 px, stopped early on long schedules (the zoo configs then fine-tune at 256 px).
ZOO_VQA_FIRST = INPUT.COARSE.IMAGE_SIZE 192 SOLVER.MAX_ITER 20000 SOLVER.STOP_ITER 1250 SOLVER.WARMUP_ITERS 200
ZOO_CAPTION_FIRST = INPUT.COARSE.IMAGE_SIZE 192 SOLVER.MAX_ITER 6000 SOLVER.STOP_ITER 2000 SOLVER.WARMUP_ITERS 200
# The retrieval model's last continuation, at retrieval.yaml's 256 px: 2000 iterations of a new 3000-iteration
# schedule, resumed after 1000 with ITM negatives by swapping one of these words (colours, shapes, sizes, sides, counts).
ZOO_RETRIEVAL_256 = SOLVER.MAX_ITER 3000 SOLVER.WARMUP_ITERS 100 SOLVER.CHECKPOINT_PERIOD 250
ZOO_SWAP_WORDS = [['red','orange','yellow','green','blue','purple','white','black'],\
['circle','square','triangle','star','hexagon','cross'],['circles','squares','triangles','stars','hexagons','crosses'],\
['small','large'],['left','right'],['above','below','under'],['two','three','four','five','six','seven','eight']]
zoo: shapes
	$(PY) projects/FIBER/train_net.py --config-file $(ZOO_CONFIGS)/grounding_stage1.yaml \
		OUTPUT_DIR $(ZOO_DIR)/grounding_stage1
	$(PY) projects/FIBER/train_net.py --config-file $(ZOO_CONFIGS)/grounding_stage2.yaml \
		OUTPUT_DIR $(ZOO_DIR)/grounding_stage2 MODEL.WEIGHTS $(ZOO_DIR)/grounding_stage1/model_final.pth DATASETS.TEST "()"
	$(PY) projects/FIBER/train_net.py --config-file $(ZOO_CONFIGS)/grounding.yaml OUTPUT_DIR $(ZOO_DIR)/grounding \
		MODEL.WEIGHTS $(ZOO_DIR)/grounding_stage2/model_final.pth DATASETS.TEST "()"
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/grounding/model_final.pth --config fiber_shapes/zoo/grounding.yaml \
		--output $(ZOO_WEIGHTS)/grounding.safetensors
	$(PY) tools/make_shapes_dataset.py --root $(ZOO_DATA)/fiber_shapes --num-train 10000
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/image_pretraining.yaml OUTPUT_DIR $(ZOO_DIR)/image_pretraining
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/image_pretraining.yaml OUTPUT_DIR $(ZOO_DIR)/image_pretraining_continued \
		MODEL.WEIGHTS $(ZOO_DIR)/image_pretraining/model_final.pth SOLVER.MAX_ITER 12000 SOLVER.WARMUP_ITERS 0 \
		SOLVER.STOP_ITER 3250
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/retrieval.yaml OUTPUT_DIR $(ZOO_DIR)/retrieval $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/image_pretraining_continued/model_final.pth INPUT.COARSE.IMAGE_SIZE 192
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/vqa.yaml OUTPUT_DIR $(ZOO_DIR)/vqa $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/retrieval/model_0001999.pth $(ZOO_VQA_FIRST)
	DETECTRON2_DATASETS=$(ZOO_DATA) $(PY) tools/export_zoo_model.py $(ZOO_DIR)/vqa/model_final.pth \
		--config fiber_shapes/zoo/vqa.yaml --output $(ZOO_WEIGHTS)/vqa.safetensors --answer-vocabulary
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/vqa.yaml OUTPUT_DIR $(ZOO_DIR)/vqa_continued $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_WEIGHTS)/vqa.safetensors MODEL.FIBER.VQA.ANSWER_VOCABULARY $(ZOO_WEIGHTS)/vqa_answers.json \
		INPUT.COARSE.IMAGE_SIZE 192 SOLVER.MAX_ITER 6000 SOLVER.WARMUP_ITERS 100
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/vqa.yaml OUTPUT_DIR $(ZOO_DIR)/vqa_256 $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/vqa_continued/model_final.pth \
		MODEL.FIBER.VQA.ANSWER_VOCABULARY $(ZOO_WEIGHTS)/vqa_answers.json SOLVER.MAX_ITER 2000
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/vqa.yaml OUTPUT_DIR $(ZOO_DIR)/vqa_256_continued $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/vqa_256/model_final.pth \
		MODEL.FIBER.VQA.ANSWER_VOCABULARY $(ZOO_WEIGHTS)/vqa_answers.json
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/caption.yaml OUTPUT_DIR $(ZOO_DIR)/caption $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/retrieval/model_0001999.pth $(ZOO_CAPTION_FIRST)
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/caption/model_final.pth --config fiber_shapes/zoo/caption.yaml \
		--output $(ZOO_WEIGHTS)/caption.safetensors
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/caption.yaml OUTPUT_DIR $(ZOO_DIR)/caption_continued $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_WEIGHTS)/caption.safetensors INPUT.COARSE.IMAGE_SIZE 192 SOLVER.MAX_ITER 4000 SOLVER.WARMUP_ITERS 100
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/caption.yaml OUTPUT_DIR $(ZOO_DIR)/caption_256 $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_DIR)/caption_continued/model_final.pth
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/retrieval/model_final.pth --config fiber_shapes/zoo/retrieval.yaml \
		--output $(ZOO_WEIGHTS)/retrieval.safetensors
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/retrieval.yaml OUTPUT_DIR $(ZOO_DIR)/retrieval_continued $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_WEIGHTS)/retrieval.safetensors INPUT.COARSE.IMAGE_SIZE 192 \
		SOLVER.MAX_ITER 2000 SOLVER.STOP_ITER 0 SOLVER.WARMUP_ITERS 100 SOLVER.CHECKPOINT_PERIOD 250
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/retrieval_continued/model_final.pth \
		--config fiber_shapes/zoo/retrieval.yaml --output $(ZOO_WEIGHTS)/retrieval.safetensors
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/retrieval.yaml OUTPUT_DIR $(ZOO_DIR)/retrieval_256 $(ZOO_TOKENIZER) \
		MODEL.WEIGHTS $(ZOO_WEIGHTS)/retrieval.safetensors $(ZOO_RETRIEVAL_256) SOLVER.STOP_ITER 1000
	$(ZOO_TRAIN) --config-file $(ZOO_CONFIGS)/retrieval.yaml --resume OUTPUT_DIR $(ZOO_DIR)/retrieval_256 \
		$(ZOO_TOKENIZER) MODEL.WEIGHTS $(ZOO_WEIGHTS)/retrieval.safetensors $(ZOO_RETRIEVAL_256) SOLVER.STOP_ITER 2000 \
		INPUT.COARSE.ITM_SWAP_WORDS "$(ZOO_SWAP_WORDS)"
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/retrieval_256/model_final.pth \
		--config fiber_shapes/zoo/retrieval.yaml --output $(ZOO_WEIGHTS)/retrieval.safetensors
	DETECTRON2_DATASETS=$(ZOO_DATA) $(PY) tools/export_zoo_model.py $(ZOO_DIR)/vqa_256_continued/model_final.pth \
		--config fiber_shapes/zoo/vqa.yaml --output $(ZOO_WEIGHTS)/vqa.safetensors --answer-vocabulary
	$(PY) tools/export_zoo_model.py $(ZOO_DIR)/caption_256/model_final.pth --config fiber_shapes/zoo/caption.yaml \
		--output $(ZOO_WEIGHTS)/caption.safetensors
	$(PY) tools/zoo_demo.py --record --output $(ZOO_DIR)/evaluation

clean:
	rm -rf $(VENV) .cache output
