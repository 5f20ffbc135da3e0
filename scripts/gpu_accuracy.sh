#!/usr/bin/env bash
# The accuracy run on a GPU node: ResNet-18 on the full defaults (100 epochs) on the genuine
# CIFAR-100, within one 10-minute job slot. See docs/gpu.md, "The accuracy run".
#
#   with the archive on the node (the official file, 161 MiB):
#                         CIFAR_ARCHIVE=/path/to/cifar-100-python.tar.gz OUT=$PWD/accuracy scripts/gpu_accuracy.sh train 25000
#
# Or as three parts, cifar-100-python.tar.gz.part0..2 of a repack of the genuine files, which
# `part N` puts one by one into the store on the node's disk (CIFAR_STORE), so that each can be
# copied to the node on its own:
#   where the parts are:  CIFAR_PARTS=DIR scripts/gpu_accuracy.sh stage   # copies them into .parts/ (ignored)
#   on the node (copy .parts/ and .whl/ there with the repository), in a shell or a batch job:
#                         scripts/gpu_accuracy.sh part 0
#                         scripts/gpu_accuracy.sh part 1
#                         scripts/gpu_accuracy.sh part 2
#                         OUT=$PWD/accuracy scripts/gpu_accuracy.sh train 25000
#
# `train IMG_S` takes the ResNet-18 epoch img/s that scripts/gpu_check.sh measured (its summary's
# parts.resnet18.figures.epoch_img_s; default 25,000, the goal), prints the minutes it predicts,
# runs download, augment, train and evaluate as dvc.yaml does (stages/*, ResNet-18 only), and
# stops training cleanly (SIGINT; per-epoch curve and checkpoint kept) when it would overrun
# ACCURACY_CALL_S (570 s from its start); writes $OUT/accuracy.json and $OUT/accuracy.log
# (OUT defaults to ./accuracy-out). At 25,000 img/s: about 5 minutes.
set -u
cd "$(dirname "$0")/.."
NAME=cifar-100-python.tar.gz
SHARED=${CIFAR_PARTS:-../shared/cifar100}  # where `stage` finds the three parts
STORE=${CIFAR_STORE:-/var/tmp/cifar100}    # on the node: the parts, from `part N` to `train`
CALL_S=${ACCURACY_CALL_S:-570}             # a 10-minute job slot, less 30 s; raise it for a longer one

case "${1:-}" in
  stage)
    mkdir -p .parts
    for i in 0 1 2; do
      [ -f "$SHARED/$NAME.part$i" ] || { echo "ERROR: $SHARED/$NAME.part$i is missing (set CIFAR_PARTS)" >&2; exit 1; }
      cp "$SHARED/$NAME.part$i" .parts/
    done
    echo "staged the three parts in .parts/; copy .parts/ to the node with the repository and run" \
      "'scripts/gpu_accuracy.sh part 0' (then 1, 2) there"
    ;;
  part)
    i=${2:?usage: scripts/gpu_accuracy.sh part 0|1|2}
    mkdir -p "$STORE"
    [ -f ".parts/$NAME.part$i" ] || { echo "ERROR: .parts/$NAME.part$i is not here: run 'scripts/gpu_accuracy.sh stage' where the parts are" \
      "and copy .parts/ to this machine (or put the part in $STORE yourself)" >&2; exit 1; }
    mv ".parts/$NAME.part$i" "$STORE/"
    ls -l "$STORE"
    ;;
  train)
    START=$(date +%s)
    : "${OUT:=$PWD/accuracy-out}"
    mkdir -p "$OUT"
    exec > >(tee "$OUT/accuracy.log") 2>&1
    . scripts/gpu_env.sh
    gpu_env || exit 1
    gpu_git || exit 1
    ARCHIVE=${CIFAR_ARCHIVE:-}
    if [ -n "$ARCHIVE" ]; then
      [ -f "$ARCHIVE" ] || { echo "ERROR: CIFAR_ARCHIVE=$ARCHIVE is not a file on this machine"; exit 1; }
    else
      for i in 0 1 2; do
        [ -f "$STORE/$NAME.part$i" ] || { echo "ERROR: $STORE/$NAME.part$i is not on this machine: set" \
          "CIFAR_ARCHIVE to the archive, or run part 0, 1, 2 on this machine (CIFAR_STORE is on the node's own" \
          "disk), then train"; exit 1; }
      done
      ARCHIVE=$STORE/$NAME
      cat "$STORE/$NAME.part0" "$STORE/$NAME.part1" "$STORE/$NAME.part2" > "$ARCHIVE"
    fi
    export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
    # The stages check the md5 before reading the archive; the budget runs from this command's start.
    "$PY" scripts/gpu_check.py accuracy --work /tmp/accuracy --json "$OUT/accuracy.json" --archive "$ARCHIVE" \
      --img-s "${2:-25000}" --budget-s $(( CALL_S - ($(date +%s) - START) ))
    ;;
  *)
    echo "usage: scripts/gpu_accuracy.sh stage | part 0|1|2 | train [IMG_S]" >&2
    exit 2
    ;;
esac
