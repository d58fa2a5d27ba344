#!/bin/bash
# one-off GPU exploration for issue 13 (not committed): 60-s Fashion runs of bigger models at batch 512, the
# training throughput of cct_7_3x1_32 at batch 1024, and a profile of its compiled step.
set -u
export PYTHONPATH=src
dev="${DEV:-cuda}"; data="${DATA:-.fmnist}"; tl="${TL:-1}"; R="$OUT/r"; mkdir -p "$R"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$R/gpu.txt" 2>&1
python -c "import torch;print(torch.__version__)" >> "$R/gpu.txt"
t0=$(date +%s)
train() {  # name, args...
    local name=$1; shift
    local s=$(date +%s)
    timeout 150 python -m compact_transformers.cli train --dataset fashion_mnist --data "$data" --device "$dev" \
        --time-limit "$tl" --output "$R/runs" --name "$name" "$@" > "$R/$name.log" 2>&1
    echo "$name rc=$? $(( $(date +%s) - s ))s $(python -c "import json,sys;d=json.load(open(sys.argv[1]));print('epochs',d['epochs'],'val',d['val']['top1'])" "$R/runs/$name/final.json" 2>&1 | tail -1)" | tee -a "$R/summary.txt"
}
train b512-s1 --batch-size 512 --seed 1
train c4-b512 --batch-size 512 --model cct_4_3x2_32
train c7-b512 --batch-size 512 --model cct_7_3x2_32
train c7-b512-lr --batch-size 512 --model cct_7_3x2_32 --lr-base-batch 512
s=$(date +%s)
timeout 150 python -m compact_transformers.cli bench --device "$dev" --models cct_7_3x1_32:32x32x3 --batch-sizes ${BS:-1024} \
    --variants fast,fast+compile --precision bf16 --modes train --output "$R/bench-b1024.json" > "$R/bench.log" 2>&1
echo "bench rc=$? $(( $(date +%s) - s ))s" | tee -a "$R/summary.txt"
s=$(date +%s)
timeout 120 python benchmarks/profile_step.py --device "$dev" --model cct_7_3x1_32:32x32x3 --batch-size ${PBS:-512} \
    --variant fast+compile --precision bf16 --output "$R/profile-compiled.txt" > "$R/profile.log" 2>&1
echo "profile rc=$? $(( $(date +%s) - s ))s" | tee -a "$R/summary.txt"
echo "total $(( $(date +%s) - t0 ))s" >> "$R/summary.txt"
rm -rf "$R"/runs/*/checkpoints "$R"/runs/*/model
tar czf "$OUT/sweep.tgz" -C "$OUT" r && rm -rf "$R"
