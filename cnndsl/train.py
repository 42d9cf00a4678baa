"""The training loop behind `cnndsl train`: no op-specific code, only the Model API.

Reproducible: the epoch's shuffle comes from (seed, epoch), the dropout RNG state is
saved with the weights, so `--resume` continues exactly where a run stopped (at an epoch
boundary after a crash, or mid-epoch after Ctrl-C, which saves first).
"""

from __future__ import annotations

import csv
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnndsl import checkpoint
from cnndsl.optim import SGD, Adam
from cnndsl.trainconfig import TrainConfig

EVAL_BATCH = 500


@dataclass
class Progress:
    """Where a run is: completed epochs, batches done in the current one, running sums."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    test: dict | None = None
    #: settings changed on resume (`--epochs`, or others with --allow-changes): one
    #: {"epoch", "step", "setting", "from", "to"} each, written to the metrics JSON
    changes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "loss_sum": self.loss_sum,
                "correct": self.correct, "seen": self.seen, "seconds": self.seconds,
                "history": self.history, "test": self.test, "changes": self.changes}


class Interrupted(Exception):
    """Ctrl-C during training; the checkpoint was saved."""


def make_optimizer(config: TrainConfig, params: dict):
    if config.optimizer == "sgd":
        return SGD(params, lr=config.learning_rate, momentum=config.momentum,
                   nesterov=config.nesterov, weight_decay=config.weight_decay)
    return Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                decoupled=config.optimizer == "adamw")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The schedule, per epoch (as PyTorch's StepLR / CosineAnnealingLR stepped per epoch)."""
    base = config.learning_rate
    if config.schedule == "step":
        return base * config.gamma ** (epoch // config.step_size)
    if config.schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    return base


def evaluate(model, x: np.ndarray, y: np.ndarray) -> dict:
    """Mean cross-entropy and accuracy of `model` (inference mode) on x, y."""
    if len(x) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        probs = predict_proba(model, x[start:start + EVAL_BATCH])
        labels = y[start:start + EVAL_BATCH]
        picked = probs[np.arange(len(labels)), labels]
        loss_sum += float(-np.log(np.maximum(picked, 1e-12)).sum())
        correct += int((probs.argmax(axis=1) == labels).sum())
    return {"loss": loss_sum / len(x), "accuracy": correct / len(x)}


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K): the network's Softmax output, or softmax of its output."""
    out = model.forward(x, train=False).reshape(len(x), -1)
    if model.logits_name == model.output_name:
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return out


class Trainer:
    def __init__(self, model, config: TrainConfig, splits, out: str, meta: dict,
                 progress_bar: bool = True, log=print):
        self.model, self.config, self.out = model, config, out
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = splits
        self.meta = meta
        self.progress_bar = progress_bar
        self.log = log
        self.optimizer = make_optimizer(config, model.parameters())
        self.state = Progress()
        self._stop = False

    # ---- checkpoints -----------------------------------------------------------------
    def save(self) -> None:
        meta = {**self.meta, "config": self.config.as_dict(), "progress": self.state.as_dict(),
                "rng": self.model.ctx.rng.bit_generator.state}
        checkpoint.save(self.out, self.model, self.optimizer, meta)

    def resume(self, path: str, arrays: dict | None = None, meta: dict | None = None,
               changes: list | None = None, force: bool = False, warn=None) -> None:
        """Continue the run saved at `path` (arrays and meta as `checkpoint.load` returns
        them, read here when not given). `changes` lists the settings that differ from the
        saved run and were allowed (`resume_changes`): recorded in the progress, and a new
        optimizer starts with fresh state."""
        if arrays is None or meta is None:
            arrays, meta = checkpoint.load(path)
        checkpoint.restore_model(self.model, arrays, meta, path, force, warn)
        changes = changes or []
        if not any(change["setting"] == "optimizer" for change in changes):
            optim = {k.split("/", 1)[1]: v for k, v in arrays.items()
                     if k.startswith("optim/")}
            try:
                self.optimizer.load_state_dict(optim)
            except KeyError:
                raise checkpoint.CheckpointError(
                    f"'{path}' was saved with another optimizer than {self.config.optimizer}",
                    hint="resume with the same --optimizer it was trained with") from None
        progress = meta.get("progress", {})
        self.state = Progress(**{k: progress[k] for k in Progress().as_dict() if k in progress})
        self.state.changes = self.state.changes + [
            {"epoch": self.state.epoch, "step": self.state.step, **change} for change in changes]
        self.model.ctx.rng.bit_generator.state = meta["rng"]

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> Progress:
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            while self.state.epoch < self.config.epochs:
                self._epoch()
            if self.state.test is None and len(self.x_test):
                self.state.test = evaluate(self.model, self.x_test, self.y_test)
                self.save()
                write_metrics(self.out, self.state)
        finally:
            signal.signal(signal.SIGINT, previous)
        return self.state

    def _on_interrupt(self, signum, frame):
        if self._stop:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self._stop = True

    def _epoch(self) -> None:
        config, state = self.config, self.state
        count = len(self.x_train)
        batches = max(1, -(-count // config.batch))
        order = np.random.default_rng([config.seed, state.epoch]).permutation(count)
        self.optimizer.lr = learning_rate(config, state.epoch)
        bar = self._bar(batches)
        started = time.perf_counter() - state.seconds
        while state.step < batches:
            if self._stop:
                state.seconds = time.perf_counter() - started
                self.save()
                raise Interrupted()
            index = order[state.step * config.batch:(state.step + 1) * config.batch]
            loss, probs, grads = self.model.loss_and_grads(self.x_train[index],
                                                           self.y_train[index])
            self.optimizer.step(grads)
            state.step += 1
            state.loss_sum += loss * len(index)
            state.correct += int((probs.argmax(axis=1) == self.y_train[index]).sum())
            state.seen += len(index)
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}",
                                acc=f"{state.correct / state.seen:.4f}",
                                img_s=f"{state.seen / max(elapsed, 1e-9):,.0f}")
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        row = {"epoch": state.epoch + 1, "lr": self.optimizer.lr,
               "loss": state.loss_sum / state.seen, "accuracy": state.correct / state.seen}
        shown = f"loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        if len(self.x_val):  # no validation split (--val 0): no figures, not NaN
            val = evaluate(self.model, self.x_val, self.y_val)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            shown += f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  "
        row.update(seconds=seconds, images_per_s=state.seen / max(seconds, 1e-9))
        state.history.append(row)
        state.test = None  # measured again once the last epoch is done
        self.log(f"epoch {row['epoch']}/{config.epochs}  {shown}"
                 f"{row['images_per_s']:,.0f} img/s  {seconds:.1f} s")
        state.epoch += 1
        state.step, state.loss_sum, state.correct, state.seen, state.seconds = 0, 0.0, 0, 0, 0.0
        self.save()
        write_metrics(self.out, state)

    def _bar(self, batches: int):
        if not self.progress_bar:
            return None
        from tqdm import tqdm

        return tqdm(total=batches, initial=self.state.step, unit="batch", leave=False,
                    desc=f"epoch {self.state.epoch + 1}/{self.config.epochs}",
                    dynamic_ncols=True)


def metrics_paths(out: str) -> dict[str, Path]:
    base = Path(out)
    stem = base.with_suffix("")
    return {"csv": Path(f"{stem}.metrics.csv"), "json": Path(f"{stem}.metrics.json"),
            "png": Path(f"{stem}.curves.png")}


def write_metrics(out: str, state: Progress) -> None:
    """Per-epoch metrics as CSV and JSON, and loss/accuracy curves as PNG, beside `out`."""
    paths = metrics_paths(out)
    if state.history:
        with open(paths["csv"], "w", newline="") as handle:
            columns = list(dict.fromkeys(k for row in state.history for k in row))
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(state.history)
    document = {"epochs": state.history, "test": state.test}
    if state.changes:
        document["changes"] = state.changes
    paths["json"].write_text(json.dumps(document, indent=2))
    plot_curves(state.history, paths["png"])


def plot_curves(history: list, path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    validated = [r for r in history if "val_loss" in r]
    left.plot(epochs, [r["loss"] for r in history], "o-", label="train")
    right.plot(epochs, [r["accuracy"] for r in history], "o-", label="train")
    if validated:
        at = [r["epoch"] for r in validated]
        left.plot(at, [r["val_loss"] for r in validated], "o-", label="validation")
        right.plot(at, [r["val_accuracy"] for r in validated], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
