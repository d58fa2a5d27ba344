#!/bin/bash
# one-off GPU measurements (not committed)
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
dev=cuda; data=.fmnist; R="$OUT/r"; mkdir -p "$R"
git log --oneline | head -1 > "$R/gpu.txt"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$R/gpu.txt" 2>&1
python -c "import torch,sys;print(torch.__version__, sys.version.split()[0], torch.cuda.get_device_name())" >> "$R/gpu.txt" 2>&1
nproc >> "$R/gpu.txt"
t0=$(date +%s)
step() { echo "$1 rc=$2 $(( $(date +%s) - $3 ))s $4" | tee -a "$R/summary.txt"; }
s=$(date +%s)
timeout 150 python -m compact_transformers.cli bench --device "$dev" --models cct_7_3x1_32:32x32x3 --batch-sizes 128,512,1024 \
    --variants fast,fast+compile --precision bf16 --modes train --output "$R/bench-c7.json" > "$R/bench-c7.log" 2>&1
step bench-c7 $? $s ""
train() {  # name, args...
    local name=$1; shift; local s=$(date +%s)
    timeout 100 python -m compact_transformers.cli train --dataset fashion_mnist --data "$data" --device "$dev" \
        --time-limit 1 --output "$R/runs" --name "$name" "$@" > "$R/$name.log" 2>&1
    step "$name" $? $s "$(python -c "import json,sys;d=json.load(open(sys.argv[1]));print('epochs',d.get('epochs'),'val',d.get('val',{}).get('top1'),'test',d.get('test'))" "$R/runs/$name/final.json" 2>&1 | tail -1)"
}
train default --seed 0
train c7-b1024 --batch-size 1024 --model cct_7_3x2_32 --lr-base-batch 1024 --seed 0
train c6-b512 --batch-size 512 --model cct_6_3x2_32 --lr-base-batch 512 --seed 0
echo "total $(( $(date +%s) - t0 ))s" >> "$R/summary.txt"
for f in "$R"/runs/*/final.json; do n=$(basename $(dirname $f)); cp "$f" "$R/$n-final.json"; cp "$(dirname $f)/metrics.jsonl" "$R/$n-metrics.jsonl" 2>/dev/null; done
rm -rf "$R"/runs
tar czf "$OUT/sweep.tgz" -C "$OUT" r && rm -rf "$R"
