#!/usr/bin/env bash
# The GPU check of the batched engine, for a maintainer with a CUDA machine (under 5 min):
# 1. the CUDA equivalence tests (batched conv and vmap paths vs train_one on CUDA);
# 2. the GPU goal: K=64 reference models of a small 2D ResNet on 64x64 images against 8
#    sequential trainings (ratios printed; > 8x means the ensemble beats 8 sequential);
# 3. the examples' CNNs at K=16 on CUDA.
# Usage: bash benchmarks/gpu_check.sh   (after scripts/setup.sh all,dev with a CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
echo "== CUDA equivalence tests"
"$py" -m pytest -q tests/unit/training/test_device.py -k cuda
echo "== K=64 small ResNet, 64x64 images (goal: faster than 8 sequential trainings)"
"$py" benchmarks/bench_conv.py --device cuda --models 64 --sequential 8 --only images64
echo "== the examples' CNNs, K=16"
"$py" benchmarks/bench_conv.py --device cuda --models 16 --sequential 4
