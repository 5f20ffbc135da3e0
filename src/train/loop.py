"""One training step and one epoch: what the train stage and the benchmark both run."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.accuracy import topk_hits
from src.runtime import Runtime
from src.train.distributed import all_sum
from src.train.ema import WeightAverage
from src.train.freeze import BackboneFreeze
from src.train.mix import BatchMix
from src.train.optim import get_lr, set_lr

CHECK_EVERY = 50       # steps between loss checks on a GPU: each check waits for it, so not every step
POSTFIX_SECONDS = 1.0  # seconds between progress-bar loss/accuracy updates (each one also waits)


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, lr: float, loss: float):
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}, lr {lr:.4g}")
        self.epoch, self.step, self.lr, self.loss = epoch, step, lr, loss


@dataclass(frozen=True)
class StepRecipe:
    label_smoothing: float
    mix: BatchMix | None          # mixup / CutMix of the batch; None: off
    grad_clip_norm: float | None
    ema: WeightAverage | None = None  # updated after every step; None: off
    freeze: BackboneFreeze | None = None  # the frozen first epochs of a pretrained model; None: none


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               recipe: StepRecipe, runtime: Runtime, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and update on one normalised batch; returns (loss, correct) as device tensors.

    `correct` counts predictions equal to the unmixed label.
    """
    targets = y
    if recipe.mix is not None:
        x, targets = recipe.mix(x, y, seed=int(rng.integers(2**63)))
    with runtime.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip_norm)
    optimizer.step()
    if recipe.ema is not None:
        recipe.ema.update()
    return loss.detach(), topk_hits(logits, y).sum()


def train_epoch(model, optimizer, batches, prepare, recipe: StepRecipe, runtime: Runtime, *,
                epoch: int, epochs: int, first_step: int, total_steps: int, warmup_steps: int,
                peak_lr: float, schedule: str, seed: int, desc: str, progress: bool = True) -> dict:
    """Train for one pass over `batches` (uint8 images, labels); `prepare` makes model inputs.

    With several processes the figures returned are those of the global batches; `progress`:
    show a progress bar (rank 0 does). Raises Diverged as soon as a check finds a non-finite loss.
    """
    model.train()
    if recipe.freeze is not None:
        recipe.freeze.start_epoch(epoch, optimizer)
    rng = np.random.default_rng([seed, epoch, 1])  # mixup/CutMix draws: repeatable after a resume
    losses, corrects, lrs = [], [], []
    seen, checked, start = 0, 0, time.perf_counter()
    shown = start  # when the progress bar's figures were last updated
    # On a GPU each check waits for the queued work, so check every CHECK_EVERY steps there.
    check_every = 1 if runtime.device.type == "cpu" else CHECK_EVERY
    bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
               mininterval=1.0, dynamic_ncols=True, disable=not progress)
    for i, (images, labels) in enumerate(bar):
        step = first_step + i
        lrs.append(get_lr(step, total_steps, warmup_steps, peak_lr, schedule))
        set_lr(optimizer, lrs[-1])
        x, y = prepare(images, labels)
        loss, correct = train_step(model, optimizer, x, y, recipe, runtime, rng)
        losses.append(loss)
        corrects.append(correct)
        seen += len(y)
        if (i + 1) % check_every == 0 or i + 1 == len(bar):
            _check_finite(losses, checked, epoch, first_step, lrs)
            checked = i + 1
        # Running averages over this process's epoch so far, from the first step on (short runs
        # too), then by the host's clock: a GPU is waited for once a second, not at every step.
        if progress and (i == 0 or time.perf_counter() - shown >= POSTFIX_SECONDS):
            shown = time.perf_counter()
            bar.set_postfix(loss=f"{torch.stack(losses).float().mean().item():.3f}",
                            acc=f"{100 * torch.stack(corrects).sum().item() / seen:.1f}%",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}", lr=f"{lrs[-1]:.3g}")
    bar.close()
    seconds = time.perf_counter() - start
    # Summed over the processes: the mean of the global batches' losses, images of all processes.
    loss_sum, loss_count, correct, seen = all_sum([torch.stack(losses).float().sum().item(), len(losses),
                                                   torch.stack(corrects).sum().item(), seen])
    return {"train_loss": loss_sum / loss_count, "train_acc": 100 * correct / max(1, seen),
            "lr": lrs[-1], "steps": len(losses), "images_per_s": seen / seconds, "seconds": seconds}


def _check_finite(losses: list[torch.Tensor], checked: int, epoch: int, first_step: int,
                  lrs: list[float]) -> None:
    """Raise Diverged for the first non-finite loss among the steps not yet checked."""
    values = torch.stack(losses[checked:]).float()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = checked + int(bad[0])
        raise Diverged(epoch + 1, first_step + i + 1, lrs[i], losses[i].item())
