#!/usr/bin/env bash
# The accuracy run on a lent GPU: ResNet-18 on the full defaults (100 epochs) on the genuine
# CIFAR-100, in four device calls. The archive (161 MiB, three parts in ../shared/cifar100) cannot
# travel in one call (64 MiB each), so each of the first three carries one part to the device's
# disk, where it stays while the machine is warm (30 s after a call: make the calls back to back).
#
#   here:    tests/gpu_accuracy.sh stage          # copies the three parts into .parts/ (ignored)
#   device:  run(command="tests/gpu_accuracy.sh part 0", carry=[".parts/cifar-100-python.tar.gz.part0"])
#            run(command="tests/gpu_accuracy.sh part 1", carry=[".parts/cifar-100-python.tar.gz.part1"])
#            run(command="tests/gpu_accuracy.sh part 2", carry=[".parts/cifar-100-python.tar.gz.part2"])
#            run(command="tests/gpu_accuracy.sh train 25000", carry=[".whl"], timeout_s=600)
#
# `train IMG_S` takes the ResNet-18 epoch img/s that tests/gpu_check.sh measured (its summary's
# parts.resnet18.figures.epoch_img_s; default 25,000, the goal), prints the minutes it predicts,
# runs download, augment, train and evaluate as dvc.yaml does (stages/*, ResNet-18 only), and
# stops training cleanly (SIGINT; per-epoch curve and checkpoint kept) when it would overrun
# the call; writes $OUT/accuracy.json and $OUT/accuracy.log. At 25,000 img/s: about 5 minutes.
set -u
cd "$(dirname "$0")/.."
NAME=cifar-100-python.tar.gz
SHARED=${CIFAR_PARTS:-../shared/cifar100}  # the genuine parts on the development machine
STORE=${CIFAR_STORE:-/var/tmp/cifar100}    # on the device: the parts between calls
CALL_S=${ACCURACY_CALL_S:-570}             # the device allows 600 s a command

case "${1:-}" in
  stage)
    mkdir -p .parts
    for i in 0 1 2; do
      [ -f "$SHARED/$NAME.part$i" ] || { echo "ERROR: $SHARED/$NAME.part$i is missing (set CIFAR_PARTS)" >&2; exit 1; }
      cp "$SHARED/$NAME.part$i" .parts/
    done
    echo "staged the three parts in .parts/; carry one a call: .parts/$NAME.part0 (then 1, 2)"
    ;;
  part)
    i=${2:?usage: tests/gpu_accuracy.sh part 0|1|2}
    mkdir -p "$STORE"
    [ -f ".parts/$NAME.part$i" ] || { echo "ERROR: .parts/$NAME.part$i did not travel: name it in carry" >&2; exit 1; }
    mv ".parts/$NAME.part$i" "$STORE/"
    ls -l "$STORE"
    ;;
  train)
    START=$(date +%s)
    : "${OUT:=$PWD/accuracy-out}"
    mkdir -p "$OUT"
    exec > >(tee "$OUT/accuracy.log") 2>&1
    . tests/gpu_env.sh
    gpu_env || exit 1
    gpu_git || exit 1
    for i in 0 1 2; do
      [ -f "$STORE/$NAME.part$i" ] || { echo "ERROR: $STORE/$NAME.part$i is not on this machine: the" \
        "machine went back between calls (30 s warm) or 'part $i' was not run; start again from part 0"; exit 1; }
    done
    cat "$STORE/$NAME.part0" "$STORE/$NAME.part1" "$STORE/$NAME.part2" > "$STORE/$NAME"
    export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
    # The stages check the md5 before reading the archive; the budget runs from this call's start.
    "$PY" tests/gpu_check.py accuracy --work /tmp/accuracy --json "$OUT/accuracy.json" --archive "$STORE/$NAME" \
      --img-s "${2:-25000}" --budget-s $(( CALL_S - ($(date +%s) - START) ))
    ;;
  *)
    echo "usage: tests/gpu_accuracy.sh stage | part 0|1|2 | train [IMG_S]" >&2
    exit 2
    ;;
esac
