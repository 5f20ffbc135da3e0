#!/usr/bin/env bash
# Check a GPU machine: one command that runs what has never run on a GPU and measures it, within
# about 9 minutes on an H100/H200 (a 10-minute job slot), each part under its own time box so that
# a hang in one keeps the others' figures. Writes $OUT/summary.json (after every part) and one log
# per part. docs/gpu.md explains the parts and the summary.
#
#   setup      install .whl/ (scripts/gpu_wheels.sh) over the machine's python3 where it lacks
#              packages; versions, GPUs
#   tests      the test files that take the CUDA paths (train, evaluate, recipe options, the
#              GPU-path test), on the tests' own generated archive (no dataset needed)
#   resnet18, resnet50
#              scripts/benchmark.py at width 64, batch 512: train step against the bare loop,
#              epoch / step, eval; bf16, channels_last, torch.compile, on-GPU augmentation
#   distributed
#              scripts/benchmark_distributed.py over 1..N processes, where N > 1 GPUs are visible
#   repro      `dvc repro` of the whole pipeline at width 64 on a generated archive with the CUDA
#              defaults (compile, on-GPU augmentation) and EMA and mixup on; checks that it
#              finishes and that each model's held-out top-1 rises from the first epoch to the last
#
# On the GPU machine, in a shell or a batch job:
#     OUT=$PWD/gpu-check scripts/gpu_check.sh
#     OUT=$PWD/gpu-check-2 scripts/gpu_check.sh --parts tests,repro    # rerun the parts that failed
# On any machine, on CPU, every part at a tiny size (width 8, 1 epoch) in a few minutes:
#     OUT=/tmp/gpu-check scripts/gpu_check.sh --dry-run
#
# Environment: OUT (required), GPU_CHECK_LIMIT_S (the whole run's bound, 540 s), PYTHON and
# GPU_VENV (scripts/gpu_env.sh).
# Exit status: 0 when every part that ran passed, 1 otherwise; the summary says which.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
PARTS=tests,resnet18,resnet50,distributed,repro  # setup always runs
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --parts) PARTS=${2:?--parts needs a comma-separated list}; shift ;;  # e.g. to rerun what failed
    *) echo "usage: scripts/gpu_check.sh [--dry-run] [--parts tests,resnet18,resnet50,distributed,repro]" \
            "(OUT=folder for summary.json and the logs)" >&2; exit 2 ;;
  esac
  shift
done
: "${OUT:?set OUT to the folder for summary.json and the logs, e.g. OUT=\$PWD/gpu-check}"
mkdir -p "$OUT"
WORK=$(mktemp -d)  # scratch: part records, the repro's project copy; only OUT is kept
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
START=$(date +%s)
LIMIT=${GPU_CHECK_LIMIT_S:-540}  # 9 minutes: the whole run fits a 10-minute job slot
. scripts/gpu_env.sh

# part NAME BOX COMMAND...: run COMMAND with stdout and stderr in $OUT/NAME.log, under
# min(BOX, what is left of LIMIT) seconds; record status and wall time; rewrite the summary.
part() {
  local name=$1 box=$2; shift 2
  if [[ ",$PARTS," != *",$name,"* ]]; then skip "$name" "not in --parts"; return; fi
  local left=$(( LIMIT - ($(date +%s) - START) ))
  (( box > left )) && box=$left
  if (( box < 10 )); then
    printf '%s\tskipped\t0\t0\tno time left of the %s s\n' "$name" "$LIMIT" >> "$WORK/parts.tsv"
  else
    echo "== $name (at most $box s)"
    local t0=$SECONDS
    # SIGINT first (Python unwinds, dvc and pytest report), SIGKILL 15 s later if it hangs.
    timeout -s INT -k 15 "$box" "$@" > "$OUT/$name.log" 2>&1
    local rc=$? status=ok
    (( rc == 124 || rc == 137 )) && status=timeout
    (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
    printf '%s\t%s\t%s\t%s\texit status %s\n' "$name" "$status" "$((SECONDS - t0))" "$box" "$rc" >> "$WORK/parts.tsv"
    echo "   $status in $((SECONDS - t0)) s (exit $rc)"
  fi
  summary
}
skip() { printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >> "$WORK/parts.tsv"; summary; }
summary() { "$PY" scripts/gpu_check.py summary --work "$WORK" --out "$OUT" --limit "$LIMIT" \
            --seconds $(( $(date +%s) - START )) $( ((DRY_RUN)) && echo --dry-run ); }

setup() {
  gpu_env || return 1
  echo "$PY" > "$WORK/python"
  gpu_git || return 1
  "$PY" scripts/gpu_check.py environment --json "$WORK/environment.json"
}

echo "== setup"
t0=$SECONDS
setup > "$OUT/setup.log" 2>&1
rc=$?
[ -s "$WORK/python" ] && PY=$(cat "$WORK/python")
printf 'setup\t%s\t%s\t%s\texit status %s\n' "$([ $rc = 0 ] && echo ok || echo failed)" "$((SECONDS - t0))" \
  "$LIMIT" "$rc" >> "$WORK/parts.tsv"
if [ $rc != 0 ]; then
  cat "$OUT/setup.log"
  "$PY" scripts/gpu_check.py summary --work "$WORK" --out "$OUT" --limit "$LIMIT" --seconds $((SECONDS - t0)) \
    $( ((DRY_RUN)) && echo --dry-run )
  exit 1
fi
summary
GPUS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["gpus"])' "$WORK/environment.json")

if ((DRY_RUN)); then  # the same parts at a tiny size on CPU
  DEVICE=cpu; WIDTH=8
  TESTS=(tests/test_train.py::test_weight_decay_skips_batchnorm_and_biases_unless_asked -n 0)
  BENCH=(--device cpu --batch-size 32 --steps 1 --repeats 1 --epoch-images 32 --loader-images 32 --compile false)
  DIST=(--processes 1,2 --device cpu --batch-size 32 --steps 1 --rounds 1 --compile false)
  # One model: every stage of the pipeline runs, and two more train stages would double its time.
  REPRO=(--width 8 --epochs 1 --train-limit 64 --test-limit 64 --batch-size 32 --device cpu --models resnet18)
  BOX_TESTS=90 BOX_BENCH=90 BOX_DIST=90 BOX_REPRO=150
else
  DEVICE=cuda; WIDTH=64
  # Compile, bf16 and the on-GPU paths: the tests marked `gpu` leave runtime.* on auto.
  TESTS=(-m gpu)
  # One epoch of 25,600 images (50 steps); the CPU loader pipelines on 5,120 images; the bare loop
  # in the project's layout only (the NCHW copy would cost a second compilation).
  BENCH=(--device cuda --batch-size 512 --steps 10 --repeats 3 --epoch-images 25600 --loader-images 5120
         --bare-layouts project)
  # 1, 2, 4, ... GPUs: each must take an equal share of the global batch of 512.
  counts=1; for ((n = 2; n <= GPUS; n *= 2)); do counts+=",$n"; done
  DIST=(--processes "$counts" --device cuda --batch-size 512 --steps 30 --rounds 2)
  REPRO=(--width 64 --epochs 4 --train-limit 10240 --test-limit 2000 --batch-size 512 --device cuda)
  BOX_TESTS=150 BOX_BENCH=90 BOX_DIST=90 BOX_REPRO=180
fi

if [ "$DEVICE" = cuda ] && [ "$GPUS" -lt 1 ]; then
  echo "ERROR: no CUDA GPU is visible to $PY (see $OUT/setup.log); use --dry-run on a CPU machine"
  skip tests "no CUDA GPU"; skip resnet18 "no CUDA GPU"; skip resnet50 "no CUDA GPU"
  skip distributed "no CUDA GPU"; skip repro "no CUDA GPU"
  exit 1
fi

part tests "$BOX_TESTS" "$PY" -m pytest -p no:cacheprovider -q -rfEs "${TESTS[@]}"
part resnet18 "$BOX_BENCH" "$PY" scripts/benchmark.py --model resnet18 --width "$WIDTH" "${BENCH[@]}" --json
part resnet50 "$((BOX_BENCH + 20))" "$PY" scripts/benchmark.py --model resnet50 --width "$WIDTH" "${BENCH[@]}" --json
if [ "$DEVICE" = cpu ] || [ "$GPUS" -gt 1 ] || [[ ",$PARTS," != *",distributed,"* ]]; then
  part distributed "$BOX_DIST" "$PY" scripts/benchmark_distributed.py --width "$WIDTH" "${DIST[@]}" --json
else
  skip distributed "one GPU visible: nothing to scale over"
fi
part repro "$BOX_REPRO" "$PY" scripts/gpu_check.py repro --work "$WORK/repro" --json "$WORK/repro.json" "${REPRO[@]}"

"$PY" scripts/gpu_check.py summary --work "$WORK" --out "$OUT" --limit "$LIMIT" --seconds $(( $(date +%s) - START )) \
  $( ((DRY_RUN)) && echo --dry-run ) --print
