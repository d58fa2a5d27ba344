#!/bin/bash
# one-off GPU check of the no-wait step (not committed)
set -u
export PYTHONPATH=src
dev="${DEV:-cuda}"; data="${DATA:-.fmnist}"; tl="${TL:-1}"; R="$OUT/r"; mkdir -p "$R"
git log --oneline | head -1 > "$R/gpu.txt"; nvidia-smi --query-gpu=name --format=csv >> "$R/gpu.txt" 2>&1
t0=$(date +%s)
step() { echo "$1 rc=$2 $(( $(date +%s) - $3 ))s $4" | tee -a "$R/summary.txt"; }
s=$(date +%s)
timeout 130 python -m compact_transformers.cli bench --device "$dev" --models cct_7_3x1_32:32x32x3 --batch-sizes ${BS:-512,1024} \
    --variants fast,fast+compile --precision bf16 --modes train --output "$R/bench-c7.json" > "$R/bench-c7.log" 2>&1
step bench-c7 $? $s ""
s=$(date +%s)
timeout 60 python -m compact_transformers.cli bench --device "$dev" --models cct_2_3x2_32:28x28x1 --batch-sizes ${BS2:-128,512} \
    --variants fast --precision bf16 --modes train --output "$R/bench-c2.json" > "$R/bench-c2.log" 2>&1
step bench-c2 $? $s ""
train() {  # name, args...
    local name=$1; shift; local s=$(date +%s)
    timeout 100 python -m compact_transformers.cli train --dataset fashion_mnist --data "$data" --device "$dev" \
        --time-limit "$tl" --output "$R/runs" --name "$name" "$@" > "$R/$name.log" 2>&1
    step "$name" $? $s "$(python -c "import json,sys;d=json.load(open(sys.argv[1]));print('epochs',d['epochs'],'val',d['val']['top1'])" "$R/runs/$name/final.json" 2>&1 | tail -1)"
}
train default
train c7-b512-lr-s1 --batch-size 512 --model cct_7_3x2_32 --lr-base-batch 512 --seed 1
s=$(date +%s)
timeout 70 python benchmarks/profile_step.py --device "$dev" --model cct_7_3x1_32:32x32x3 --batch-size ${PBS:-512} \
    --variant fast+compile --precision bf16 --output "$R/profile-compiled.txt" > "$R/profile.log" 2>&1
step profile $? $s ""
echo "total $(( $(date +%s) - t0 ))s" >> "$R/summary.txt"
rm -rf "$R"/runs/*/checkpoints "$R"/runs/*/model
tar czf "$OUT/sweep2.tgz" -C "$OUT" r && rm -rf "$R"
