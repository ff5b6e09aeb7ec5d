#!/usr/bin/env bash
# The GPU rows of docs/BENCHMARKS.md (GPU speed: inference precision, launches per forward, LVIS, training throughput,
# FIBER-B training step and memory) in one run, each benchmark's JSON rows in OUT/<name>.jsonl and its log in
# OUT/<name>.log.
#
#   tools/gpu_benchmarks.sh [OUT]            # default OUT: output/benchmarks/gpu; not yet run on a GPU
#   SMOKE=1 tools/gpu_benchmarks.sh [OUT]    # the same commands on the CPU at tiny sizes, to rehearse the script
#
# PYTHON (default: python) runs tools/benchmark.py; FIBER-Shapes is generated under $DETECTRON2_DATASETS (default
# ./datasets) when it is not there. A failing benchmark is reported and the others still run; the exit status is the
# number of failures.
set -u
cd "$(dirname "$0")/.."
out=${1:-output/benchmarks/gpu}
python=${PYTHON:-python}
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-datasets} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$out"

shapes="$DETECTRON2_DATASETS/fiber_shapes"
if [ ! -f "$shapes/meta.json" ]; then
    "$python" tools/make_shapes_dataset.py --root "$shapes" > "$out/make_shapes_dataset.log" 2>&1 || {
        echo "FIBER-Shapes could not be generated (see $out/make_shapes_dataset.log)"; exit 1; }
fi

fiber_b=configs/fiber_b/coco_zeroshot.yaml
if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu size=64x96 min_size=64 max_size=96 repeats=1 profiled=1 warmup=0 iters=1 train_warmup=0 tiny_batch=2
    workers=0
    lvis_extra=(--num-chunks 2 --repeats 1 --warmup 0 --threads 1) latency_extra=(--queries 30 --gdino-layers 2 --threads 1)
else
    device=cuda size=800x1333 min_size=800 max_size=1333 repeats=20 profiled=3 warmup=5 iters=20 train_warmup=10
    tiny_batch=64
    workers=12 lvis_extra=(--repeats 3 --warmup 1) latency_extra=()
fi
# FIBER-B trained on FIBER-Shapes images resized as the fine stage's (random weights, the FIBER-Shapes tokenizer).
fiber_b_train=(--config-file configs/fiber_b/fine_pretrain_goldg_o365.yaml --opts
    DATASETS.TRAIN "('fiber_shapes_colorshape_train',)" DATASETS.TEST "()" MODEL.FIBER.TOKENIZER "$shapes/tokenizer"
    INPUT.MIN_SIZE_TRAIN "($min_size,)" INPUT.MAX_SIZE_TRAIN "$max_size" SOLVER.IMS_PER_BATCH 2
    DATALOADER.NUM_WORKERS 2)
tiny_train=(--opts SOLVER.IMS_PER_BATCH "$tiny_batch" DATALOADER.NUM_WORKERS "$workers")

failures=0
bench() {  # bench NAME BENCHMARK ARGS...: one benchmark, rows appended to OUT/NAME.jsonl
    local name=$1
    shift
    echo "$(date +%T) $name"
    if ! "$python" tools/benchmark.py "$@" >> "$out/$name.jsonl" 2> "$out/$name.log"; then
        echo "  $name failed: $(tail -n 1 "$out/$name.log")"
        failures=$((failures + 1))
    fi
}

bench latency_fiber_b latency --config-file "$fiber_b" --size "$size" --dtypes fp32,bf16 --repeats "$repeats" \
    --warmup "$warmup" --device "$device" "${latency_extra[@]}"
bench launches_fiber_b launches --config-file "$fiber_b" --size "$size" --dtypes fp32,bf16 --repeats "$profiled" \
    --warmup "$warmup" --device "$device" --top 25
bench lvis_fp32 lvis --size "$size" --device "$device" "${lvis_extra[@]}"
bench lvis_bf16 lvis --size "$size" --device "$device" "${lvis_extra[@]}" \
    --opts MODEL.FIBER.INFERENCE_DTYPE bfloat16
bench lvis_bf16_batch8 lvis --size "$size" --device "$device" "${lvis_extra[@]}" --chunk-batch 8 \
    --opts MODEL.FIBER.INFERENCE_DTYPE bfloat16
bench train_tiny_fp32 train --iters "$iters" --warmup "$train_warmup" --device "$device" "${tiny_train[@]}"
bench train_tiny_amp train --amp --iters "$iters" --warmup "$train_warmup" --device "$device" "${tiny_train[@]}"
bench train_fiber_b_fp32 train --iters "$iters" --warmup "$train_warmup" --device "$device" "${fiber_b_train[@]}"
bench train_fiber_b_amp train --amp --iters "$iters" --warmup "$train_warmup" --device "$device" "${fiber_b_train[@]}"
echo "$(date +%T) done, $failures failed; rows in $out/*.jsonl"
exit "$failures"
