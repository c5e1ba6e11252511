#!/usr/bin/env bash
# Issue 17's GPU figures in one run, without Ray or MLflow (a GPU machine may have torch and nothing else):
#   1. benchmarks/speed/core.py on SD 1.5's shape (sd15-random) at 512 px in bfloat16: the sampler against the stock
#      pipeline, the sampler's and the D3PO update's FLOP rates against the GPU's bfloat16 matmul peak
#      (targets 40 % and 30 %), where the update's time goes; then the same with --compile;
#   2. benchmarks/speed/family_memory.py: DRaFT-K's peak memory and seconds per step for K = 1, 5, 10, 20, 50 with
#      gradient checkpointing, and a D3PO step;
#   3. where Ray imports: benchmarks/speed/ray_pipeline.py with two samplers sharing the GPU and one train worker.
# Usage: bash benchmarks/gpu.sh [model] [device] [resolution]   (default: sd15-random cuda 512)
#        bash benchmarks/gpu.sh tiny cpu 32                      (checks this script on a CPU in minutes)
# Wheels of diffusers, transformers, peft and their needs can travel in .whl (see .library/device/README.md):
# they are installed first when present. Every command's output also goes to $OUT/gpu.log when OUT is set.
set -euo pipefail
model=${1:-sd15-random}
device=${2:-cuda}
resolution=${3:-512}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$here${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu.log
run() {
    echo "\$ $*" | tee -a "$log"
    "$python" "$@" 2>&1 | tee -a "$log"
}
if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$log"; fi
core=(benchmarks/speed/core.py --model "$model" --device "$device" --dtype bfloat16 --resolution "$resolution"
    --pairs 8 --batch-size 8 --steps 20 --repeats 2)
run "${core[@]}"
run "${core[@]}" --compile
run benchmarks/speed/family_memory.py --model "$model" --device "$device" --dtype bfloat16 \
    --resolution "$resolution" --num-steps 50 --k 1,5,10,20,50 --repeats 2
if [ "$device" != cuda ]; then
    echo "no GPU: the Ray pipeline on one GPU is not measured (on a CPU: benchmarks/speed/ray_pipeline.py)" | tee -a "$log"
elif "$python" -c "import ray" 2>/dev/null; then
    run benchmarks/speed/ray_pipeline.py --model "$model" --dtype bfloat16 --samplers 2 --sampler-gpus 0.25 \
        --worker-gpus 0.5
else  # Ray 2.60's wheel (79 MB) is larger than the 64 MiB a device call can carry
    echo "ray is not installed here: the Ray pipeline on one GPU is not measured" | tee -a "$log"
fi
