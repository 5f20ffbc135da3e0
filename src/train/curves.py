"""What a training run reports after each epoch: DVCLive curves and one printed line.

Rank 0 reports for the whole job; the other processes of a distributed run stay silent.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dvclive import Live

CURVES = ("train_loss", "train_acc", "heldout_loss", "heldout_acc", "lr")


class EpochLog:
    def __init__(self, live: Live | None, name: str, epochs: int, heldout_split: str, ema: bool):
        self.live, self.name, self.epochs, self.heldout_split, self.ema = live, name, epochs, heldout_split, ema

    def replay(self, history: list[dict]) -> None:
        """A resumed run re-logs the finished epochs: one complete curve."""
        for epoch, row in enumerate(history):
            self._log(epoch, row)

    def record(self, epoch: int, row: dict) -> None:
        if self.live is None:  # not rank 0
            return
        self._log(epoch, row)
        print(f"{self.name} epoch {epoch + 1}/{self.epochs}: train loss {row['train_loss']:.3f} acc "
              f"{row['train_acc']:.1f}% | {self.heldout_split} loss {row['heldout_loss']:.3f} acc "
              f"{row['heldout_acc']:.1f}%{' (EMA)' if self.ema else ''} | {row['images_per_s']:.0f} img/s")

    def _log(self, epoch: int, row: dict) -> None:
        if self.live is None:
            return
        # DVCLive's step is the x of `dvc plots`: the epoch number, 1 for the first, not DVCLive's 0.
        self.live.step = epoch + 1
        for key in CURVES:
            self.live.log_metric(key.replace("_", "/", 1), row[key])
        self.live.next_step()


@contextmanager
def epoch_log(name: str, epochs: int, heldout_split: str, ema: bool, main_process: bool) -> Iterator[EpochLog]:
    """The log of plots/train/<name>/ (written by rank 0 only)."""
    if not main_process:
        yield EpochLog(None, name, epochs, heldout_split, ema)
        return
    with Live(dir=f"plots/train/{name}", dvcyaml=False, save_dvc_exp=False, report=None) as live:
        yield EpochLog(live, name, epochs, heldout_split, ema)
        live.summary["heldout_split"] = heldout_split + ("" if heldout_split == "val" else
                                                         " (monitoring only, nothing selected on it)")
