"""Stages `train-resnet18`, `train-resnet34`, `train-resnet50`: train one model from scratch.

    python -m stages.train --model resnet18      (run by `dvc repro train-resnet18`)

In:  data/prepared/, params seed, lr, epochs, batch_size, model.width, model.zero_init_residual,
     model.dropout, model.<name>, train, runtime
Out: models/<name>.pt         final weights (the EMA of the weights with train.ema_decay) + the
                              params, data hash and versions that made them
     plots/train/<name>/      per-epoch curves (DVCLive)
Resumes from checkpoints/<name>.pt after an interruption when nothing that matters changed.
"""
import argparse
import json
from pathlib import Path

import torch
from dvclive import Live

from src.augment import pipelines
from src.cli import UserError, run
from src.data import splits
from src.data.normalize import Normalizer
from src.models.resnet import ARCHITECTURES, build_model
from src.params import Params, load_params
from src.predict import loss_and_accuracy, predict_logits
from src.runtime import Runtime, resolve, seed_everything
from src.train import checkpoint
from src.train.data import make_batches
from src.train.ema import WeightAverage
from src.train.loop import Diverged, StepRecipe, train_epoch
from src.train.mix import BatchMix
from src.train.optim import build_optimizer

PREPARED = "data/prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(ARCHITECTURES))
    name = parser.parse_args().model
    params = load_params()
    recipe, runtime = params.recipe(name), resolve(params.runtime)
    seed_everything(params.seed)
    print(f"{name}: training on {runtime.describe()}")

    train = splits.load(f"{PREPARED}/train.npz")
    heldout_split = "val" if params.data.val_size > 0 else "test"
    heldout = splits.load(f"{PREPARED}/{heldout_split}.npz")
    transform = "train_autoaugment" if recipe.autoaugment else "train"
    augment, mean, std = pipelines.split_normalize(pipelines.load(f"{PREPARED}/transform_{transform}.json"))
    normalize = Normalizer(mean, std, runtime.device, runtime.channels_last)
    batches = make_batches(train["images"], train["fine_labels"], augment, params.batch_size,
                           params.seed, runtime)

    model = build_model(name, width=params.model.width, zero_init_residual=params.model.zero_init_residual,
                        dropout=params.model.dropout).to(runtime.device, memory_format=runtime.memory_format)
    optimizer = build_optimizer(model, params.train, runtime.device)
    ema = WeightAverage(model, params.train.ema_decay, params.train.ema_warmup) if params.train.ema_decay else None
    final = ema.module if ema else model  # what is evaluated and written to models/<name>.pt
    epochs, peak_lr, steps = params.model_epochs(name), params.model_lr(name), len(batches)
    training = _training_record(name, params, runtime, transform, heldout_split)
    data_hash = checkpoint.data_hash(PREPARED)
    ckpt_path = f"checkpoints/{name}.pt"
    fingerprint = checkpoint.fingerprint(training, data_hash)  # params, data and code of this run
    state, message = checkpoint.load_checkpoint(ckpt_path, fingerprint)
    print(f"{name}: {message}")
    history = checkpoint.restore(state, model, optimizer, ema) if state else []

    # Warmup never takes more than half the run (short test runs would never reach the peak).
    warmup_steps = min(round(params.train.warmup_epochs * steps), epochs * steps // 2)
    forward = torch.compile(model) if runtime.compile else model
    step_recipe = StepRecipe(params.train.label_smoothing, _batch_mix(params, name, runtime),
                             params.train.grad_clip_norm, ema)
    saver = checkpoint.BackgroundSaver()  # resume points, written while the next epoch trains
    prepare = lambda images, labels: (normalize(images), labels.to(runtime.device, non_blocking=True))  # noqa: E731
    with Live(dir=f"plots/train/{name}", dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for row in history:  # a resumed run re-logs the finished epochs: one complete curve
            _log(live, row)
        for epoch in range(len(history), epochs):
            batches.set_epoch(epoch)
            try:
                row = train_epoch(forward, optimizer, batches, prepare, step_recipe, runtime,
                                  epoch=epoch, epochs=epochs, first_step=epoch * steps,
                                  total_steps=epochs * steps, warmup_steps=warmup_steps,
                                  peak_lr=peak_lr, schedule=params.train.schedule,
                                  seed=params.seed, desc=name)
            except Diverged as error:
                raise UserError(f"{name} diverged: {error}. Lower the learning rate (e.g. `dvc exp run "
                                f"-S lr={params.lr / 2:g}`), lengthen train.warmup_epochs or set "
                                "train.grad_clip_norm. No weights were written.") from None
            # Eager, not `forward`: compiling the eval graph (and again for the last, smaller
            # batch) would cost more than it saves on 10,000 images per epoch.
            logits = predict_logits(final, heldout["images"], normalize, runtime, params.runtime.eval_batch_size)
            row["heldout_loss"], row["heldout_acc"] = loss_and_accuracy(logits, heldout["fine_labels"])
            history.append(row)
            _log(live, row)
            saver.submit(checkpoint.resume_point(fingerprint, epoch + 1, model, optimizer, ema, history),
                         ckpt_path)
            print(f"{name} epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.3f} acc "
                  f"{row['train_acc']:.1f}% | {heldout_split} loss {row['heldout_loss']:.3f} acc "
                  f"{row['heldout_acc']:.1f}%{' (EMA)' if ema else ''} | {row['images_per_s']:.0f} img/s")
        live.summary["heldout_split"] = heldout_split + ("" if heldout_split == "val" else
                                                         " (monitoring only, nothing selected on it)")

    saver.wait()  # the last resume point is complete before the model file makes it obsolete
    checkpoint.save({"architecture": name, "num_classes": 100, "width": params.model.width,
                     "state_dict": final.state_dict(), "ema": ema is not None, "params": training,
                     "prepared_data_hash": data_hash, "normalize": {"mean": mean.tolist(), "std": std.tolist()},
                     "classes": json.loads(Path(f"{PREPARED}/classes.json").read_text())["fine"],
                     "history": history, "versions": checkpoint.versions()}, f"models/{name}.pt")
    Path(ckpt_path).unlink(missing_ok=True)  # finished: nothing to resume
    print(f"{name}: wrote models/{name}.pt ({json.dumps(history[-1])})")


def _training_record(name: str, params: Params, runtime: Runtime, transform: str, heldout: str) -> dict:
    """What made the weights: stored in the model file, and hashed into the resume fingerprint."""
    return {"model": name, "seed": params.seed, "lr": params.model_lr(name), "epochs": params.model_epochs(name),
            "batch_size": params.batch_size, "width": params.model.width,
            "zero_init_residual": params.model.zero_init_residual, "dropout": params.model.dropout,
            "recipe": params.recipe(name).model_dump(), "train": params.train.model_dump(),
            "transform": transform, "heldout": heldout,
            "runtime": {"device": runtime.device.type, "compile": runtime.compile,
                        "gpu_augment": runtime.gpu_augment, "precision": runtime.precision,
                        "channels_last": runtime.channels_last,
                        "deterministic": params.runtime.deterministic}}


def _batch_mix(params: Params, name: str, runtime: Runtime) -> BatchMix | None:
    recipe = params.recipe(name)
    return BatchMix.build(recipe.mixup_alpha, recipe.cutmix_alpha, recipe.cutmix_prob, num_classes=100,
                          memory_format=runtime.memory_format)


def _log(live: Live, row: dict) -> None:
    for key in ("train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr"):
        live.log_metric(key.replace("_", "/", 1), row[key])
    live.next_step()


if __name__ == "__main__":
    run(main)
