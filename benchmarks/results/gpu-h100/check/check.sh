#!/bin/bash
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p /tmp/gc
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > /tmp/gc/gpu.txt 2>&1
git log --oneline | head -1 >> /tmp/gc/gpu.txt
CCT_CHECK_BUDGET=${BUDGET:-400} timeout 480 bash benchmarks/gpu_check.sh /tmp/gc --fashion-mnist .fmnist
echo "exit $?" >> /tmp/gc/gpu.txt
rm -rf /tmp/gc/*/checkpoints /tmp/gc/*/model
tar czf $OUT/gc.tgz -C /tmp gc
cat /tmp/gc/summary.json
