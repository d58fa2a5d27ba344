#!/usr/bin/env bash
# GPU readiness check: `cct bench` and `cct train` on one GPU in under 8 minutes, results under OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [--device cuda|cuda:N|cpu] [--fashion-mnist DIR] [--tiny]
#
# Steps, most needed first; each one gets what is left of an 8-minute budget (less a margin; CCT_CHECK_BUDGET
# seconds to change it), so the script ends in time even when a step hangs:
#   train/           the default command on Fashion-MNIST with --time-limit 1 (test top-1 after 60 s, the
#                    whole command; the dataset held on the device; on a GPU the small-gpu recipe: cct_7_3x2_32
#                    at batch 512), run directory under OUT_DIR/train
#   throughput.json  cct bench: 3 models at batch 128 and 512, baseline / bf16 autocast / channels-last / fast
#                    / fast with explicit attention (fast trains with SDPA on a GPU, with it on a CPU)
#   compiled.json    fast vs fast+compile vs fast+cudagraphs (torch.compile, mode reduce-overhead)
#   train-b512/      the same 60-second run with --batch-size 512: the small recipe's cct_2_3x2_32 (lr scaled)
#   latency.json     batch-1 latency of cct_7_3x1_32: eager, torch.compile, ONNX Runtime (CPU)
#   accuracy.json    time to 88% val top-1 of cct_2_3x2_32 on Fashion-MNIST (held on the device by cct train)
# and OUT_DIR/<step>.log (each step's text report and progress), OUT_DIR/summary.json (each step's status,
# exit code and seconds). Exit status 0 when every step that ran succeeded, 1 otherwise.
#
# --device cpu (or CCT_CHECK_DEVICE=cpu) runs it without a GPU; --tiny (or CCT_CHECK_TINY=1) shrinks every
# step to seconds (a small input, a few steps, one epoch on 10 images per class, train steps of 6 s, digits
# when Fashion-MNIST is missing) for a smoke test. The compile steps run on CUDA, or anywhere with CCT_CHECK_COMPILE=1.
# PYTHON (default python3) is the interpreter with compact_transformers installed.
set -u

usage() { sed -n '2,4p' "$0" >&2; exit 2; }

out=""
device="${CCT_CHECK_DEVICE:-cuda}"
fashion="${CCT_CHECK_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
tiny="${CCT_CHECK_TINY:-0}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) [ $# -ge 2 ] || usage; device="$2"; shift 2 ;;
        --fashion-mnist) [ $# -ge 2 ] || usage; fashion="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        -h|--help) usage ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$out" ] || usage; out="$1"; shift ;;
    esac
done
[ -n "$out" ] || usage
mkdir -p "$out" || exit 2

python="${PYTHON:-python3}"
budget="${CCT_CHECK_BUDGET:-465}"  # seconds for all steps: 8 minutes less a margin for start-up and the summary
case "$budget" in
    ''|*[!0-9]*) echo "gpu_check.sh: CCT_CHECK_BUDGET must be whole seconds, got '$budget'" >&2; exit 2 ;;
esac
started=$(date +%s)
compile=0
train_data=()
case "$device" in cuda*) compile=1 ;; esac
[ "${CCT_CHECK_COMPILE:-0}" = 1 ] && compile=1

if [ "$tiny" = 1 ]; then
    models_all="cct_2_3x2_32:16x16x1"
    model_one="cct_2_3x2_32:16x16x1"
    sizes=(--batch-sizes 4 --warmup 1 --repeats 2 --steps 1 --peak-sizes 64)
    latency=(--latency-samples 5 --latency-warmup 2)
    accuracy=(--time-to-accuracy 1 --accuracy-epochs 1 --accuracy-samples-per-class 10)
    train_minutes=0.1
else
    models_all="cct_2_3x2_32:28x28x1,cct_7_3x2_32:32x32x3,cct_7_3x1_32:32x32x3"
    model_one="cct_7_3x1_32:32x32x3"
    sizes=(--batch-sizes 128,512)
    latency=(--latency-samples 200)
    accuracy=(--time-to-accuracy 88 --accuracy-epochs 8)
    train_minutes=1
fi
if [ -f "$fashion/train-images-idx3-ubyte.gz" ] || [ -f "$fashion/train-images-idx3-ubyte" ]; then
    accuracy+=(--accuracy-dataset fashion_mnist --accuracy-data "$fashion")
    train_data=(--dataset fashion_mnist --data "$fashion")
elif [ "$tiny" = 1 ]; then
    echo "gpu_check.sh: no Fashion-MNIST in $fashion: the accuracy and train steps use digits" >&2
    accuracy+=(--accuracy-dataset digits)
    train_data=(--dataset digits)
else
    echo "gpu_check.sh: no Fashion-MNIST in $fashion (apt-get install dataset-fashion-mnist, or --fashion-mnist DIR)" >&2
fi
latency_paths="eager,onnx"
[ "$compile" = 1 ] && latency_paths="eager,compile,onnx"

summary=()
failed=0

# run_step NAME COMMAND ARGS...: `cct COMMAND ARGS` within what is left of the budget, its output in
# OUT/NAME.log; a bench step writes OUT/NAME.json, a train step its run directory OUT/NAME
run_step() {
    local name="$1" command="$2"; shift 2
    local left=$(( budget - ($(date +%s) - started) ))
    local status code seconds begin
    if [ "$left" -lt 20 ]; then
        echo "gpu_check.sh: $name: skipped, the time budget is spent" >&2
        summary+=("{\"step\": \"$name\", \"status\": \"skipped\", \"reason\": \"time budget spent\"}")
        return
    fi
    echo "gpu_check.sh: $name (at most ${left} s)" >&2
    begin=$(date +%s)
    local target=("--output" "$out/$name.json") output="$name.json"
    if [ "$command" = train ]; then
        target=("--output" "$out" "--name" "$name") output="$name/"
        rm -rf "${out:?}/$name"  # a run directory left by an earlier check would make cct train pick another name
    fi
    timeout --signal=TERM --kill-after=10 "$left" \
        "$python" -m compact_transformers.cli "$command" --device "$device" "${target[@]}" "$@" \
        >"$out/$name.log" 2>&1
    code=$?
    seconds=$(( $(date +%s) - begin ))
    if [ "$code" = 0 ]; then status=ok
    elif [ "$code" = 124 ] || [ "$code" = 137 ] || [ "$code" = 143 ]; then status=timeout; failed=1
    else status=failed; failed=1
    fi
    echo "gpu_check.sh: $name: $status (exit $code, ${seconds} s)" >&2
    summary+=("{\"step\": \"$name\", \"status\": \"$status\", \"exit_code\": $code, \"seconds\": $seconds, \"output\": \"$output\"}")
}

if [ "${#train_data[@]}" -gt 0 ]; then
    run_step train train "${train_data[@]}" --time-limit "$train_minutes"
else
    summary+=("{\"step\": \"train\", \"status\": \"skipped\", \"reason\": \"no Fashion-MNIST\"}")
fi
run_step throughput bench --models "$models_all" "${sizes[@]}" --precision bf16 \
    --variants baseline,amp-nchw,fp32-cl,fast,fast-explicit
if [ "$compile" = 1 ]; then
    compiled_sizes=("${sizes[@]}")
    [ "$tiny" = 1 ] || compiled_sizes=(--batch-sizes 512)
    run_step compiled bench --models "$model_one" "${compiled_sizes[@]}" --precision bf16 \
        --variants fast,fast+compile,fast+cudagraphs
else
    summary+=("{\"step\": \"compiled\", \"status\": \"skipped\", \"reason\": \"compile steps run on CUDA or with CCT_CHECK_COMPILE=1\"}")
fi
if [ "${#train_data[@]}" -gt 0 ]; then
    run_step train-b512 train "${train_data[@]}" --time-limit "$train_minutes" --batch-size 512
else
    summary+=("{\"step\": \"train-b512\", \"status\": \"skipped\", \"reason\": \"no Fashion-MNIST\"}")
fi
run_step latency bench --modes latency --models "$model_one" --latency-paths "$latency_paths" "${latency[@]}" \
    --peak-sizes 256
run_step accuracy bench --modes none "${accuracy[@]}" --peak-sizes 256

total=$(( $(date +%s) - started ))
{
    echo "{"
    echo "  \"device\": \"$device\", \"tiny\": $([ "$tiny" = 1 ] && echo true || echo false), \"total_seconds\": $total,"
    echo "  \"steps\": ["
    for index in "${!summary[@]}"; do
        separator=","
        [ "$index" = $(( ${#summary[@]} - 1 )) ] && separator=""
        echo "    ${summary[$index]}$separator"
    done
    echo "  ]"
    echo "}"
} >"$out/summary.json"
echo "gpu_check.sh: ${total} s; results in $out (summary.json)" >&2
exit "$failed"
