#!/usr/bin/env bash
# The GPU check of the batched engine, for a maintainer with a CUDA machine (under 5 min):
# 1. the CUDA equivalence tests (batched conv and vmap paths vs train_one on CUDA);
# 2. the GPU goal: K=64 reference models of a small 2D ResNet on 64x64 images against 8
#    sequential trainings (ratios printed; > 8x means the ensemble beats 8 sequential);
# 3. the examples' CNNs at K=16 on CUDA;
# 4. the fine-tunes (issue 28): the frozen trunk computed once at K=64, and batched LoRA
#    at K=16 and 64 against K sequential PEFT fine-tunes, on the fine-tune example's model;
# 5. the callback under DDP, one rank per GPU (when there are two or more), against one
#    process: the audit's seconds with the reference models split across the ranks.
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
echo "== fine-tunes: frozen trunk at K=64; batched LoRA at K=16 and 64"
"$py" benchmarks/bench_frozen.py --example --device cuda
"$py" benchmarks/bench_lora.py --device cuda --rounds 1
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
    echo "== the callback under DDP: $gpus ranks (one per GPU) vs one process, K=64"
    for devices in 1 "$gpus"; do
        out="$(mktemp -d)"
        "$py" benchmarks/bench_ddp.py --devices "$devices" --accelerator gpu --models 64 --out "$out"
        echo "devices=$devices audit seconds: $(cat "$out/timing.json")"
        rm -rf "$out"
    done
else
    echo "== DDP: one GPU, nothing to split (needs two or more)"
fi
