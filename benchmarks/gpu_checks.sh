#!/usr/bin/env bash
# Every GPU measurement of the performance targets in one run (one H100/H200, under 10 minutes;
# the step timeouts add up to 650 s):
#   1. pre-training step of the base preset at batch 256 against the official-style step, eager
#   2. the same step with torch.compile (the CUDA default of `maco-cxr pretrain`)
#   3. the compiled step with activation checkpointing (memory)
#   4. end to end: `maco-cxr pretrain` from a prepared 448 px store against the bare step, with the
#      rate of every input stage (decode/collate, H2D copy, augmentation)
#   5. inference: image embeddings (bf16) vs a plain timm ViT, and from a prepared store
#   6. a short CUDA pre-training run through the real engine under torchrun (compile + DDP path)
#   7. `compare`'s path per family (own preprocessing + encoder) on phantoms, images/s against MaCo
# Each writes its figures to $OUT/<name>.txt (default ./gpu-checks); the run prints them too.
set -u
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
run() {  # run NAME SECONDS COMMAND...: a timed-out or failed step is recorded and the rest go on
  local name=$1 seconds=$2
  shift 2
  echo "=== $name" | tee "$OUT/$name.txt"
  timeout "$seconds" "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$OUT/$name.txt"
  echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}
nvidia-smi -L | tee "$OUT/device.txt"
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])" \
  | tee -a "$OUT/device.txt"
$PY -c "import timm" 2>/dev/null || $PY -m pip install -q timm 2>&1 | tail -n 1
run throughput_eager 100 $PY benchmarks/pretrain_throughput.py --preset base --batch 256 --device cuda --steps 5 --warmup 2
run throughput_compiled 150 $PY benchmarks/pretrain_throughput.py --preset base --batch 256 --device cuda --steps 8 \
  --warmup 3 --compile --no-baseline
run throughput_compiled_checkpointing 110 $PY benchmarks/pretrain_throughput.py --preset base --batch 256 \
  --device cuda --steps 5 --warmup 3 --compile --grad-checkpointing --no-baseline
run end_to_end 140 $PY benchmarks/pretrain_end_to_end.py --preset base --batch 256 --device cuda --images 3072 \
  --workers 12 --steps 40
run inference 60 $PY benchmarks/inference_throughput.py --preset base --batch 512 --device cuda --workers 12 \
  --store-images 8192
run pretrain_torchrun_tiny 60 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m maco_cxr pretrain \
  --config tiny-synthetic --no-progress runtime.device=cuda runtime.output_dir=/tmp/gpu-pretrain \
  runtime.resume=never data.synthetic_count=64 data.workers=4 optim.epochs=2
tail -n 3 /tmp/gpu-pretrain/metrics.csv 2>/dev/null | tee -a "$OUT/pretrain_torchrun_tiny.txt"
run compare_families 30 $PY benchmarks/compare_throughput.py --images 512 --device cuda --batch 64
