"""Stages `train-<name>` (train-resnet18, train-resnet34, train-resnet50, ...): train one model,
the one whose `model.<name>` block in params.yaml gives its architecture and recipe, from scratch
or (`pretrained: imagenet`) from the ImageNet weights its weights-<name> stage fetched.

    python -m stages.train --model resnet18      (run by `dvc repro train-resnet18`)

In:  data/prepared/, weights/<name>.pt (pretrained models), params seed, lr, epochs, batch_size,
     the shared augment.* keys a model may override, model.width, model.zero_init_residual,
     model.dropout, model.<name>, train, runtime
Out: models/<name>.pt         final weights (the EMA of the weights with train.ema_decay) + the
                              params, augmentation, data hash and versions that made them
                              (src/model_file.py)
     plots/train/<name>/      per-epoch curves (DVCLive)
Resumes from checkpoints/<name>.pt after an interruption when nothing that matters changed.
With runtime.nproc_per_node > 1 (or under torchrun) it trains in several processes
(src/train/distributed.py); rank 0 writes every output, in the single-process format.
"""
import argparse
import json
import os
from pathlib import Path

import torch

from src import model_file
from src.accuracy import loss_and_accuracy
from src.augment import pipelines
from src.data import splits
from src.data.normalize import Normalizer
from src.errors import UserError, run
from src.models import pretrained
from src.models.build import build_model, check_architecture
from src.params import Params, load_params
from src.predict import predict_logits
from src.provenance import data_hash, versions
from src.runtime import Runtime, processes_per_node, resolve, seed_everything
from src.train import checkpoint, distributed
from src.train.curves import epoch_log
from src.train.data import make_batches
from src.train.ema import WeightAverage
from src.train.freeze import BackboneFreeze
from src.train.loop import Diverged, StepRecipe, train_epoch
from src.train.mix import BatchMix
from src.train.optim import build_optimizer

PREPARED = "data/prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model.<name> block of params.yaml")
    name = parser.parse_args().model
    params = load_params()
    try:  # an unknown name, or an architecture module that is not there, fails in a second
        check_architecture(params.recipe(name).architecture())
    except ValueError as error:
        raise UserError(f"cannot build model.{name}: {error}") from None
    if not distributed.started_by_launcher() and (nproc := processes_per_node(params.runtime)) > 1:
        distributed.check_global_batch(params.batch_size, nproc)
        print(f"{name}: starting {nproc} training processes (torch.distributed elastic launcher)")
        distributed.launch(nproc, ["-m", "stages.train", "--model", name], what=name,
                           after_a_kill="Run `dvc repro` again: training resumes from the last finished epoch.")
        return
    processes = distributed.from_environment()  # one process, or one of a torchrun job
    distributed.check_global_batch(params.batch_size, processes.world_size)
    runtime = resolve(params.runtime, processes.local_rank, processes.local_world_size)
    with distributed.process_group(processes, runtime.device):
        train(name, params, runtime, processes)


def train(name: str, params: Params, runtime: Runtime, processes: distributed.Processes) -> None:
    recipe, main_process = params.recipe(name), processes.is_main
    seed_everything(params.seed)
    if processes.world_size > 1:
        print(f"{name}: process rank {processes.rank} of {processes.world_size} (pid {os.getpid()}) on "
              f"{runtime.device}", flush=True)
    if main_process:  # rank 0 speaks and writes for the job
        print(f"{name}: training on {runtime.describe()}")
    train_split = splits.load(f"{PREPARED}/train.npz")
    heldout_split = "val" if params.data.val_size > 0 else "test"
    heldout = splits.load(f"{PREPARED}/{heldout_split}.npz") if main_process else None
    stats = json.loads(Path(f"{PREPARED}/stats.json").read_text())  # this model's pipeline, built here
    augment, mean, std = pipelines.split_normalize(pipelines.build_train(
        params.model_augment(name), stats["mean"], stats["std"], recipe.autoaugment))
    normalize = Normalizer(mean, std, runtime.device, runtime.channels_last)
    global_batch = min(params.batch_size, len(train_split["fine_labels"]))
    batches = make_batches(train_split["images"], train_split["fine_labels"], augment, params.batch_size,
                           params.seed, runtime, shard=processes.shard(global_batch))

    model = build_model(recipe.architecture(), width=params.model.width, dropout=params.model.dropout,
                        zero_init_residual=params.model.zero_init_residual)
    if main_process and getattr(model, "stem_changes", None):
        print(f"{name}: CIFAR stem ({', '.join(model.stem_changes)})")
    weights, freeze = _start_from_imagenet(name, model, recipe.freeze_epochs) if recipe.pretrained else (None, None)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    model, forward = distributed.wrap(model, processes, params.runtime.sync_batchnorm is not False)
    optimizer = build_optimizer(model, params.train, runtime.device, freeze.is_backbone if freeze else None)
    ema = WeightAverage(model, params.train.ema_decay, params.train.ema_warmup) if params.train.ema_decay else None
    final = ema.module if ema else model  # what is evaluated and written to models/<name>.pt
    epochs, peak_lr, steps = params.model_epochs(name), params.model_lr(name), len(batches)
    training = checkpoint.training_record(name, params, runtime, processes.world_size, heldout_split)
    prepared_hash = data_hash(PREPARED)
    ckpt_path = f"checkpoints/{name}.pt"
    # params, data, code (and ImageNet weights) of this run
    fingerprint = checkpoint.fingerprint(training, prepared_hash, weights and weights["md5"])
    # Rank 0 reads the resume point and hands it to the others (their disks may not have it).
    state, message = distributed.broadcast(checkpoint.load_checkpoint(ckpt_path, fingerprint)
                                           if main_process else None, processes)
    history = checkpoint.restore(state, model, optimizer, ema) if state else []

    # Warmup never takes more than half the run (short test runs would never reach the peak).
    warmup_steps = min(round(params.model_warmup_epochs(name) * steps), epochs * steps // 2)
    forward = torch.compile(forward) if runtime.compile else forward
    step_recipe = StepRecipe(params.train.label_smoothing, _batch_mix(params, name, runtime),
                             params.train.grad_clip_norm, ema, freeze)
    saver = checkpoint.BackgroundSaver()  # resume points, written while the next epoch trains
    prepare = lambda images, labels: (normalize(images), labels.to(runtime.device, non_blocking=True))  # noqa: E731
    with epoch_log(name, epochs, heldout_split, ema is not None, main_process) as log:
        if main_process:
            print(f"{name}: {message}")
        log.replay(history)
        for epoch in range(len(history), epochs):
            batches.set_epoch(epoch)
            try:
                row = train_epoch(forward, optimizer, batches, prepare, step_recipe, runtime,
                                  epoch=epoch, epochs=epochs, first_step=epoch * steps,
                                  total_steps=epochs * steps, warmup_steps=warmup_steps,
                                  peak_lr=peak_lr, schedule=params.train.schedule,
                                  seed=params.seed, desc=name, progress=main_process)
            except Diverged as error:
                raise UserError(f"{name} diverged: {error}. Lower the learning rate (e.g. `dvc exp run "
                                f"-S lr={params.lr / 2:g}`), lengthen train.warmup_epochs or set "
                                "train.grad_clip_norm. No weights were written.") from None
            if not main_process:
                continue
            # Eager, not `forward`: compiling the eval graph (and again for the last, smaller
            # batch) would cost more than it saves on 10,000 images per epoch.
            logits = predict_logits(final, heldout["images"], normalize, runtime, params.runtime.eval_batch_size)
            row["heldout_loss"], row["heldout_acc"] = loss_and_accuracy(logits, heldout["fine_labels"])
            history.append(row)
            log.record(epoch, row)
            saver.submit(checkpoint.resume_point(fingerprint, epoch + 1, model, optimizer, ema, history),
                         ckpt_path)
    if main_process:
        saver.wait()  # the last resume point is complete before the model file makes it obsolete
        model_file.write(model_file.path_of(name), name=name, architecture=recipe.architecture(),
                         width=params.model.width, state_dict=final.state_dict(), ema=ema is not None,
                         params=training, prepared_data_hash=prepared_hash,
                         normalize={"mean": mean.tolist(), "std": std.tolist()},
                         classes=json.loads(Path(f"{PREPARED}/classes.json").read_text())["fine"],
                         history=history, versions=versions(), pretrained=weights)
        Path(ckpt_path).unlink(missing_ok=True)  # finished: nothing to resume
        print(_closing_line(name, heldout_split, history))


def _start_from_imagenet(name: str, model, freeze_epochs: int) -> tuple[dict, BackboneFreeze | None]:
    """Load weights/<name>.pt into `model` under its new head; what the model file records of the
    weights, and the frozen first phase (None without one)."""
    path = pretrained.path_of(name)
    try:
        head, record = pretrained.load_into(model, path)
    except ValueError as error:
        raise UserError(f"{name}: {error}") from None
    return record, BackboneFreeze(model, head, freeze_epochs) if freeze_epochs else None


def _closing_line(name: str, heldout_split: str, history: list[dict]) -> str:
    """One sentence: held-out top-1 at the end, training time and speed (resumed epochs included)."""
    seconds = sum(row["seconds"] for row in history)
    images = sum(row["images_per_s"] * row["seconds"] for row in history)
    return (f"{name}: {heldout_split} top-1 {history[-1]['heldout_acc']:.2f}% after {len(history)} epochs, "
            f"{seconds:,.0f} s of training at {images / seconds:,.0f} img/s; wrote models/{name}.pt")


def _batch_mix(params: Params, name: str, runtime: Runtime) -> BatchMix | None:
    recipe = params.recipe(name)
    return BatchMix.build(recipe.mixup_alpha, recipe.cutmix_alpha, recipe.cutmix_prob, num_classes=100,
                          memory_format=runtime.memory_format)


if __name__ == "__main__":
    run(main)
