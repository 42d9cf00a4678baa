"""The training loop behind `cnndsl train`: no op-specific code, only the Model API.

Reproducible: the epoch's shuffle comes from (seed, epoch), the dropout RNG state is
saved with the weights, so `--resume` continues exactly where a run stopped (at an epoch
boundary after a crash, or mid-epoch after Ctrl-C or SIGTERM, which save first). A resumed
file's progress, RNG state and optimizer state are checked against this run before use.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnndsl import checkpoint
from cnndsl.checkpoint import CheckpointError, bad_field
from cnndsl.optim import SGD, Adam, StateError
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
    """Ctrl-C (SIGINT) or SIGTERM during training; the checkpoint was saved. `signum` is
    the signal's number (the CLI exits 128 + signum, as a shell reports a signal)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


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
        state = self._checked_progress(meta, path)  # before anything is changed
        rng = self._checked_rng(meta, path)
        checkpoint.restore_model(self.model, arrays, meta, path, force, warn)
        changes = changes or []
        if not any(change["setting"] == "optimizer" for change in changes):
            optim = {k.split("/", 1)[1]: v for k, v in arrays.items()
                     if k.startswith("optim/")}
            try:
                self.optimizer.load_state_dict(optim)
            except KeyError:
                raise CheckpointError(
                    f"'{path}' was saved with another optimizer than {self.config.optimizer}",
                    hint="resume with the same --optimizer it was trained with") from None
            except StateError as error:
                raise CheckpointError(
                    f"'{path}': its optimizer state does not fit this network: {error}",
                    hint="it was not written for this network, or was tampered with; "
                         "--allow-changes --optimizer OTHER starts a fresh state") from None
        self.state = state
        self.state.changes = self.state.changes + [
            {"epoch": self.state.epoch, "step": self.state.step, **change} for change in changes]
        self.model.ctx.rng.bit_generator.state = rng

    def _checked_progress(self, meta: dict, path: str) -> Progress:
        """The saved progress, each field checked against this run (types were checked by
        `checkpoint.load`): the step inside the epoch, the sums within what was seen."""
        checkpoint.check_meta(meta, path)  # also when meta did not come from load()
        progress = meta.get("progress") or {}
        state = Progress(**{k: progress[k] for k in Progress().as_dict() if k in progress})
        batches = max(1, -(-len(self.x_train) // self.config.batch))
        if state.step >= batches:
            raise bad_field(path, "progress.step", f"a batch of the epoch (0 to {batches - 1} "
                            f"at batch {self.config.batch} on {len(self.x_train):,} images)",
                            state.step)
        if state.step and state.epoch >= self.config.epochs:
            raise bad_field(path, "progress.epoch", f"below {self.config.epochs} (the run's "
                            "epochs) when stopped mid-epoch", state.epoch)
        if len(state.history) != state.epoch:
            raise bad_field(path, "progress.history", f"one row per finished epoch "
                            f"({state.epoch}), got {len(state.history)} rows")
        if state.seen > state.step * self.config.batch:
            raise bad_field(path, "progress.seen", f"at most {state.step * self.config.batch} "
                            f"after {state.step} batches", state.seen)
        if state.correct > state.seen:
            raise bad_field(path, "progress.correct", f"at most progress.seen ({state.seen})",
                            state.correct)
        return state

    def _checked_rng(self, meta: dict, path: str) -> dict:
        """The saved dropout RNG state, tried on a fresh generator of the model's kind."""
        generator = self.model.ctx.rng.bit_generator
        rng = meta.get("rng")
        try:
            if not isinstance(rng, dict) or rng.get("bit_generator") != type(generator).__name__:
                raise ValueError
            type(generator)().state = rng
        except (ValueError, TypeError, KeyError, OverflowError):
            raise bad_field(path, "rng", f"the state of a {type(generator).__name__} "
                            "generator", rng) from None
        return rng

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> Progress:
        """Train the remaining epochs. SIGINT (Ctrl-C) and SIGTERM (kill, a batch system's
        time limit) finish the batch, save, and raise Interrupted; a second one stops at
        once. Signal handlers can only be set in the main thread: elsewhere, none are."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_interrupt)
        try:
            while self.state.epoch < self.config.epochs:
                self._epoch()
            if self.state.test is None and len(self.x_test):
                self.state.test = evaluate(self.model, self.x_test, self.y_test)
                self.save()
                write_metrics(self.out, self.state)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.state

    def _on_interrupt(self, signum, frame):
        if self._stop:  # a second signal: stop at once
            raise KeyboardInterrupt
        self._stop = signum

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
                raise Interrupted(self._stop)
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
    """Per-epoch metrics as CSV and JSON, and loss/accuracy curves as PNG, beside `out`;
    each written atomically (`checkpoint.write_atomically`: a full disk is a
    CheckpointError and leaves the previous file)."""
    paths = metrics_paths(out)
    if state.history:
        columns = list(dict.fromkeys(k for row in state.history for k in row))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(state.history)
        checkpoint.write_atomically(paths["csv"], _writer(text.getvalue()), "metrics")
    document = {"epochs": state.history, "test": state.test}
    if state.changes:
        document["changes"] = state.changes
    checkpoint.write_atomically(paths["json"], _writer(json.dumps(document, indent=2)),
                                "metrics")
    plot_curves(state.history, paths["png"])


def _writer(text: str):
    return lambda handle: handle.write(text.encode("utf-8"))


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
    try:
        checkpoint.write_atomically(path, lambda handle: figure.savefig(handle, format="png",
                                                                       dpi=110), "curves")
    finally:
        plt.close(figure)
