"""Scaling of the train stage's step over processes (DDP) at a fixed global batch, in one run.

    python scripts/benchmark_distributed.py --processes 1,2 --device cpu --width 16 --batch-size 128 --json

On a machine with several GPUs, one process per GPU (cuda:<local_rank>, NCCL):

    python scripts/benchmark_distributed.py --processes 1,2,4,8 --device cuda --width 64 --batch-size 512 --steps 50

Not collected by pytest. Each round launches the stage's way (src/train/distributed.py: torch's
elastic launcher, each process OMP_NUM_THREADS = cores // N) N processes of this script's
--worker branch for every N in --processes, smallest first in even rounds and last in odd
ones. Each process joins the process group, wraps the model as the stage does (DDP,
synchronised BatchNorm), takes its shard of every batch from make_batches (loader workers or
on-device augmentation as the runtime resolves them for N processes) and runs an untimed
warm-up epoch, then a timed epoch of --steps optimizer steps through train_epoch: forward,
backward with the gradient all-reduce, update, loss checks. The images are random uint8
(the speed of a step does not depend on the pixels). Starting the launcher and the processes
(a few seconds each time) is outside the timed epoch; launch_s, the median wall time of a whole
launch (start-up, warm-up and timed epochs), shows what a round costs. Figures, per N:
  img_s        global images per second (all processes together), the best round
               (img_s_per_round: every round's, to see how noisy the machine was)
  step_ms      time per optimizer step of the global batch, the best round
  speedup      img_s(N) / img_s(smallest N): the median over rounds of the ratio within a round
               (both launched back to back), which a busy machine moves less than best-of figures
  efficiency   speedup * smallest N / N: 1.0 is perfect linear scaling, img_s(N) / (N * img_s(1))
--batch-size is the global batch at every N, as runtime.nproc_per_node keeps it (each process
takes batch / N), so this is strong scaling: the per-process batch shrinks as N grows, and
efficiency falls once a GPU's share is too small to keep it busy. Scaling the batch with N
(weak scaling) is NOT what this measures: that would change the recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Progress bars would bury the figures (the processes inherit this); tqdm reads it when imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import MEAN, STD, paired_ratio, report  # noqa: E402  (scripts/ is this script's folder)

from src.augment import pipelines  # noqa: E402
from src.data.normalize import Normalizer  # noqa: E402
from src.errors import run  # noqa: E402
from src.models.build import build_model  # noqa: E402
from src.params import AugmentParams, RuntimeParams, TrainParams, load_params  # noqa: E402
from src.runtime import available_cores, resolve  # noqa: E402
from src.train import distributed  # noqa: E402
from src.train.data import make_batches  # noqa: E402
from src.train.loop import StepRecipe, train_epoch  # noqa: E402
from src.train.optim import build_optimizer  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One of the N processes: the stage's setup on synthetic data, then a timed epoch."""
    processes = distributed.from_environment()
    flag = {"auto": "auto", "true": True, "false": False}
    runtime = resolve(RuntimeParams(device=args.device, compile=flag[args.compile]),
                      processes.local_rank, processes.local_world_size)
    device, batch = runtime.device, args.batch_size
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with distributed.process_group(processes, device):
        torch.manual_seed(0)
        rng = np.random.default_rng(0)  # the same split in every process: each takes its shard
        images = rng.integers(0, 256, (args.steps * batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, args.steps * batch)
        pipeline = pipelines.split_normalize(pipelines.build_train(AugmentParams(), MEAN, STD))[0]
        batches = make_batches(images, labels, pipeline, batch, 0, runtime, shard=processes.shard(batch))
        model = build_model(load_params().recipe(args.model).architecture(), width=args.width).to(
            device, memory_format=runtime.memory_format)
        model, forward = distributed.wrap(model, processes, sync_batchnorm=True)
        optimizer = build_optimizer(model, TrainParams(), device)
        forward = torch.compile(forward) if runtime.compile else forward
        normalize = Normalizer(MEAN, STD, device, runtime.channels_last)
        prepare = lambda x, y: (normalize(x), y.to(device, non_blocking=True))  # noqa: E731 as the stage
        recipe = StepRecipe(TrainParams().label_smoothing, mix=None, grad_clip_norm=None)

        def epoch(index: int) -> None:
            batches.set_epoch(index)
            train_epoch(forward, optimizer, batches, prepare, recipe, runtime, epoch=index, epochs=2,
                        first_step=index * args.steps, total_steps=10 * args.steps, warmup_steps=args.steps,
                        peak_lr=0.1, schedule="cosine", seed=0, desc="bench", progress=False)

        # Warm-up: loader workers start (persistent), DDP buckets, cuDNN autotuning, compilation.
        epoch(0)
        sync()
        distributed.all_sum([0.0])  # a barrier: every process starts the clock together
        start = time.perf_counter()
        epoch(1)
        sync()
        seconds = time.perf_counter() - start
    if processes.is_main:
        Path(args.out).write_text(json.dumps({
            "img_s": args.steps * batch / seconds, "step_ms": 1000 * seconds / args.steps,
            "threads": torch.get_num_threads(), "runtime": runtime.describe()}))


def launch_once(nproc: int, omp_threads: str | None) -> dict:
    """Run the worker branch in `nproc` processes; rank 0's figures, with the launch's wall time."""
    # launch() sets OMP_NUM_THREADS = cores // nproc in *this* process's environment, only if it
    # is unset: without this, every launch after the first would inherit the first one's count.
    if omp_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    with tempfile.TemporaryDirectory() as folder:
        out = f"{folder}/rank0.json"
        start = time.perf_counter()
        distributed.launch(nproc, [str(Path(__file__).resolve()), *sys.argv[1:], "--worker", "--out", out],
                           what=f"benchmark, {nproc} processes")
        result = json.loads(Path(out).read_text())
    result["launch_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts, e.g. 1,2,4,8")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch, at every N")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps in the timed epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    counts = sorted({int(n) for n in args.processes.split(",")})
    for n in counts:
        distributed.check_global_batch(args.batch_size, n)
    if args.device == "cuda" and counts[-1] > torch.cuda.device_count():
        parser.error(f"--processes up to {counts[-1]} needs as many GPUs; {torch.cuda.device_count()} visible")
    omp_threads = os.environ.get("OMP_NUM_THREADS")
    results = {n: [] for n in counts}
    for round_ in range(args.rounds):
        # Alternate the order, so a machine that slows down (or speeds up) over a round favours no N.
        for n in counts if round_ % 2 == 0 else counts[::-1]:
            results[n].append(launch_once(n, omp_threads))

    base = counts[0]
    figures = {}
    for n in counts:
        speedup = paired_ratio([r["img_s"] for r in results[n]], [r["img_s"] for r in results[base]])
        figures[f"{n}_processes"] = {
            "img_s": round(max(r["img_s"] for r in results[n]), 1),
            "step_ms": round(min(r["step_ms"] for r in results[n]), 2),
            "img_s_per_round": [round(r["img_s"], 1) for r in results[n]],  # round by round
            "speedup": round(speedup, 3), "efficiency": round(speedup * base / n, 3),
            "threads_per_process": results[n][0]["threads"],
            "launch_s": round(sorted(r["launch_s"] for r in results[n])[len(results[n]) // 2], 1),
            "runtime": results[n][0]["runtime"]}
    figures["config"] = {"device": args.device, "model": args.model, "width": args.width,
                         "global_batch": args.batch_size, "steps": args.steps, "rounds": args.rounds,
                         "baseline_processes": base, "cores": available_cores(),
                         "torch": str(torch.__version__)}
    report(figures, args.json)


if __name__ == "__main__":
    run(main)
