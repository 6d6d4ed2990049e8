#!/usr/bin/env bash
# The GPU checks in one run (used with a lent H100/H200): pre-training throughput of the base
# preset at batch 256 against the official-style step, the same with torch.compile, and a short
# CUDA pre-training run through the real engine (bf16 autocast, fused AdamW, on-device augment).
# Writes its logs under $OUT (or ./gpu-checks) and prints them.
set -u
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
nvidia-smi -L
$PY -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
timeout 130 $PY benchmarks/pretrain_throughput.py --preset base --batch 256 --device cuda --steps 5 --warmup 2 \
  2>&1 | tee "$OUT/throughput_base_b256.txt"
timeout 170 $PY benchmarks/pretrain_throughput.py --preset base --batch 256 --device cuda --steps 5 --warmup 3 \
  --compile --no-baseline 2>&1 | tail -n 12 | tee "$OUT/throughput_base_b256_compile.txt"
timeout 80 $PY -m maco_cxr pretrain --config configs/pretrain/tiny-synthetic.yaml --no-progress \
  runtime.device=cuda runtime.output_dir=/tmp/gpu-pretrain data.synthetic_count=64 data.workers=4 optim.epochs=2 \
  2>&1 | tail -n 15 | tee "$OUT/pretrain_tiny_cuda.txt"
tail -n 3 /tmp/gpu-pretrain/metrics.csv 2>/dev/null | tee -a "$OUT/pretrain_tiny_cuda.txt"
