"""The training loop: the one engine behind `cnndsl train` and `Model.fit`, no op-specific
code, only the Model API. Evaluation and prediction live here too (`cnndsl eval`,
`cnndsl predict`, `Model.evaluate`, `Model.predict` and the validation pass all call
`evaluate` / `predict`).

`Trainer` runs epochs over arrays with a `TrainConfig`, and calls its callbacks
(cnndsl.callbacks): what the CLI writes each epoch, the checkpoint beside `-o` and the
metrics files, are the callbacks `ModelCheckpoint` and `MetricsFiles`.

Data augmentation (cnndsl.augment, the config's shift, flip, rotate, ...) changes each
training batch just before its step, drawn from (seed, epoch, step); the validation and
test images are never augmented.

Reproducible: the epoch's shuffle comes from (seed, epoch), the dropout RNG state is
saved with the weights, so `--resume` continues exactly where a run stopped (at an epoch
boundary after a crash, or mid-epoch after Ctrl-C or SIGTERM, which save first). A resumed
file's progress, RNG state and optimizer state are checked against this run before use.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnndsl import augment, checkpoint
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
    #: the engine that runs the steps when it is not this loop's own (the torch engine's
    #: description): written to the metrics JSON, not part of the saved progress
    engine: dict | None = None

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "loss_sum": self.loss_sum,
                "correct": self.correct, "seen": self.seen, "seconds": self.seconds,
                "history": self.history, "test": self.test, "changes": self.changes}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training, taken at the end of a batch: the model
    holds whole steps only, and the callbacks have saved what they save (the CLI's
    checkpoint). `signum` is the signal's number (the CLI exits 128 + signum, as a shell
    reports a signal). A KeyboardInterrupt, so Python code that stops on Ctrl-C stops."""

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


# ---- evaluation and prediction ----------------------------------------------------------

def predict(model, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, K) of x: (N, *input), in inference mode, `batch` examples
    at a time (peak memory: one batch's activations)."""
    parts = [predict_proba(model, x[start:start + batch]) for start in range(0, len(x), batch)]
    if not parts:
        return np.empty((0, int(np.prod(model.output_shape))), dtype=model.dtype)
    return np.concatenate(parts)


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) of one batch: the network's Softmax output, or softmax of
    its output."""
    out = model.forward(x, train=False).reshape(len(x), -1)
    if model.logits_name == model.output_name:
        shifted = np.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return out


#: top-5 accuracy (ILSVRC's measure) is reported when there are more classes than this
TOP_K = 5


def evaluate(model, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH,
             classes: int | None = None) -> dict:
    """Mean cross-entropy, accuracy, per-class accuracy and confusion matrix of `model`
    (inference mode) on x: (N, *input), y: (N,) class indices.

    {"loss", "accuracy", "per_class": [accuracy of class k, NaN without examples],
    "confusion": (K, K) int64 ndarray, rows the true class, columns the predicted one},
    and "top5" (the fraction whose true class is among the 5 most probable outputs) when
    there are more than 5 classes. K is `classes` (default: the network's outputs), or
    more if a prediction is beyond it. No examples: NaN loss and accuracy (and top5)."""
    from cnndsl.report import confusion_matrix

    classes = int(np.prod(model.output_shape)) if classes is None else classes
    loss_sum, predicted, in_top = 0.0, [], 0
    for start in range(0, len(x), batch):
        probs = predict_proba(model, x[start:start + batch])
        labels = y[start:start + batch]
        picked = probs[np.arange(len(labels)), labels]
        loss_sum += float(-np.log(np.maximum(picked, 1e-12)).sum())
        predicted.append(probs.argmax(axis=1))
        in_top += top_k_hits(probs, labels, TOP_K)
    predicted = np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(y, predicted, classes)
    counts = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diagonal(matrix) / counts
    if len(x) == 0:
        loss = accuracy = top = float("nan")
    else:
        loss, accuracy = loss_sum / len(x), int(np.trace(matrix)) / len(x)
        top = in_top / len(x)
    result = {"loss": loss, "accuracy": accuracy}
    if classes > TOP_K:
        result["top5"] = top
    return {**result, "per_class": [float(a) for a in per_class], "confusion": matrix}


def top_k_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows of probs: (N, K) rank their label (N,) among their k highest. Ties
    rank the lower index first, as argmax does (so k=1 counts what argmax gets right, and
    a uniform output is not 'right' for every label)."""
    picked = probs[np.arange(len(labels)), labels][:, None]
    before = np.arange(probs.shape[1])[None, :] < labels[:, None]
    ahead = (probs > picked) | ((probs == picked) & before)
    return int((ahead.sum(axis=1) < k).sum())


def _loss_and_accuracy(model, x, y) -> dict:
    """What the history records of a validation or test pass (JSON-ready): loss,
    accuracy, and top5 with more than 5 classes."""
    result = evaluate(model, x, y)
    return {key: result[key] for key in ("loss", "accuracy", "top5") if key in result}


# ---- progress bars and the first run's compilation ---------------------------------------

def progress_shown(progress: bool | None) -> bool:
    """Whether to draw progress bars: `progress` if given, else where someone sees them: in
    a Jupyter notebook (a widget, or text without ipywidgets) or on a terminal; never into
    a pipe or a log file."""
    if progress is not None:
        return bool(progress)
    return in_notebook() or _isatty(sys.stderr)


def in_notebook() -> bool:
    """Running in a Jupyter kernel (the test tqdm.auto makes)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def progress_bar(total: int, desc: str, unit: str, initial: int = 0):
    """A tqdm.auto bar on stderr: a widget in a notebook, text on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, leave=False, desc=desc,
                dynamic_ncols=True)


def compile_kernels(model, batch: int, train: bool, progress: bool | None = None,
                    say=None) -> None:
    """Compile (or load from Numba's cache) the kernels `model` needs before its first
    batch, saying so (`say(line)`, default: to stderr) when that takes seconds: on a
    machine's first run, not in silence behind a progress bar stuck at 0%."""
    from cnndsl.warmup import prepare

    if say is None:
        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    state = {}

    def kernels(count: int) -> str:
        return f"{count} kernel{'s' if count != 1 else ''}"

    def report(done: int, total: int, name: str | None) -> None:
        if done == 0:
            state["start"] = time.perf_counter()
            say(f"compiling {kernels(total)} for this machine (first run only; cached for "
                "the next runs) ...")
            if progress_shown(progress):
                state["bar"] = progress_bar(total, "", "kernel")
            return
        if "bar" in state:
            state["bar"].update(1)
            state["bar"].set_postfix_str(name)
        if done == total:
            if "bar" in state:
                state["bar"].close()
            say(f"compiled {kernels(total)} in {time.perf_counter() - state['start']:.1f} s")

    prepare(model, batch, report=report, train=train)


def check_memory(model, batch: int, train: bool) -> None:
    """Refuse now, with their size, activations that cannot fit (not a MemoryError later)."""
    from cnndsl.memory import check_fits

    check_fits(model.graph, model.dtype.itemsize, batch, train=train)


def checkpoint_meta(model, text: str | None = None, bindings: dict | None = None,
                    classes: list | None = None, data: str | None = None,
                    limit: int | None = None, fingerprint: str | None = None) -> dict:
    """What a run's checkpoints record besides weights and progress (docs/language.md
    §11): the network's text and bindings (default: those `cnndsl.compile`/`load` kept on
    the model), its name and input, the file's train block, the class names, and the data
    (`--data` spec, `--limit`, a fingerprint) that `--resume` checks and loads again."""
    text = text if text is not None else model.source_text
    bindings = bindings if bindings is not None else model.source_bindings
    meta = {"bindings": dict(bindings or {}), "name": model.name,
            "input_shape": list(model.input_shape),
            "train_block": dict(model.graph.graph.get("train_settings") or {}),
            "data": data, "run_data": {"data": data, "limit": limit,
                                       "fingerprint": fingerprint}}
    if text is not None:
        meta["architecture"] = text
    if classes is not None:
        meta["classes"] = [str(name) for name in classes]
    return meta


def describe_run(model, config: TrainConfig, source: str, n_train: int, n_val: int) -> str:
    """The line printed before training (by `cnndsl train` and by `fit`)."""
    held_out = f", {n_val:,} held out" if n_val else ", no validation split"
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    augmented = augment.describe(config)
    return (f"training {model.name} ({model.num_params:,} parameters) on {source}: "
            f"{n_train:,} images{held_out}, {epochs}, {config.optimizer} lr "
            f"{config.learning_rate:g}, batch {config.batch}, seed {config.seed}"
            + (f", augmented: {augmented}" if augmented else ""))


# ---- the trainer ---------------------------------------------------------------------------

class Trainer:
    """Trains `model` on `splits` = (x_train, y_train, x_val, y_val, x_test, y_test) (x:
    N×*input float32, channels-last; y: N int64; validation and test may be empty) with
    the settings of `config`.

    `callbacks` (cnndsl.callbacks.Callback) are told of the run's events and may stop it
    (`stop_training`). `out` is the CLI's files: the checkpoint at `out` and the metrics
    beside it, every epoch (the callbacks ModelCheckpoint(out) and MetricsFiles(out)).
    `meta` describes the run in saved checkpoints (architecture text, data, classes).
    `progress_bar`: None draws one where it is seen (`progress_shown`); `log(line)` gets
    the line printed after each epoch (None: nothing)."""

    def __init__(self, model, config: TrainConfig, splits, out: str | None = None,
                 meta: dict | None = None, progress_bar: bool | None = None, log=print,
                 callbacks=()):
        self.model, self.config, self.out = model, config, out
        refused = augment.unsupported(config, model.input_shape)
        if refused is not None:  # the CLI and fit say so first, naming the flag or argument
            from cnndsl.trainconfig import SettingError

            raise SettingError(refused[1], hint=refused[2])
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = splits
        self.meta = dict(meta or {})
        self.progress_bar = progress_bar
        self.log = log if log is not None else (lambda line: None)
        self.optimizer = make_optimizer(config, model.parameters())
        self.state = Progress()
        self.callbacks = list(callbacks)
        if out is not None:
            from cnndsl.callbacks import MetricsFiles, ModelCheckpoint

            self.callbacks[:0] = [ModelCheckpoint(out), MetricsFiles(out)]
        #: set (by a callback, e.g. EarlyStopping) to end the run after this epoch
        self.stop_training = False
        self._stop = False  # the signal that asked to stop, as its number
        #: None: the steps run on the model itself (Numba); else `use_engine`'s engine
        self.engine = None

    def use_engine(self, engine) -> None:
        """Run the steps, the learning rate and the evaluations on `engine` (the torch
        engine, cnndsl.torchengine) from now on; everything else (epochs, shuffles,
        augmentation, progress, callbacks, checkpoints) stays this loop's. Call it after
        `resume`: the engine starts from the model's weights and the optimizer's state.

        The engine has `step(x, y, epoch, step) -> (mean loss, correct)` over the global
        batch, `set_lr(lr)`, `evaluate(x, y) -> {"loss", "accuracy"[, "top5"]}`,
        `agree_stop(signum) -> signum` (all processes stop at the same batch) and
        `sync_back(model, optimizer)` (its weights and optimizer state into cnndsl's, before
        a save)."""
        self.engine = engine
        self.state.engine = engine.describe()

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, path: str | None = None) -> None:
        """The run as it is now, to `path` (default `out`): weights, optimizer state,
        settings, progress and random state, resumable by `cnndsl train --resume`."""
        if self.engine is not None:
            self.engine.sync_back(self.model, self.optimizer)
        meta = {**self.meta, "config": self.config.as_dict(), "progress": self.state.as_dict(),
                "rng": self.model.ctx.rng.bit_generator.state}
        if self.engine is not None:
            meta["engine"] = self.state.engine
        checkpoint.save(path or self.out, self.model, self.optimizer, meta)

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
        """Train the remaining epochs (fewer if a callback stops the run), then measure the
        test split once if there is one. SIGINT (Ctrl-C) and SIGTERM (kill, a batch
        system's time limit) finish the batch, let the callbacks save (`on_interrupt`),
        and raise Interrupted; a second one stops at once. Signal handlers can only be set
        in the main thread: elsewhere, none are."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_interrupt)
        try:
            self.stop_training = False
            for callback in self.callbacks:
                callback.trainer = self
            self._call("on_train_begin", self._last_row())
            while self.state.epoch < self.config.epochs and not self.stop_training:
                self._epoch()
            if self.state.test is None and len(self.x_test):
                self.state.test = self._measure(self.x_test, self.y_test)
                self._call("on_test_end", dict(self.state.test))
            self._call("on_train_end", self._last_row())
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.state

    def _call(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)  # a callback may have only some
            if handler is not None:
                handler(*args)

    def _last_row(self) -> dict:
        return dict(self.state.history[-1]) if self.state.history else {}

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
        if self.engine is not None:
            self.engine.set_lr(self.optimizer.lr)
        self._call("on_epoch_begin", state.epoch + 1, {"lr": self.optimizer.lr})
        bar = self._bar(batches)
        started = time.perf_counter() - state.seconds
        try:
            while state.step < batches:
                stop = self._stop if self.engine is None else self.engine.agree_stop(self._stop)
                if stop:
                    state.seconds = time.perf_counter() - started
                    self._call("on_interrupt", self._running_row())
                    raise Interrupted(stop)
                index = order[state.step * config.batch:(state.step + 1) * config.batch]
                loss, correct = self._step(index)
                state.step += 1
                state.loss_sum += loss * len(index)
                state.correct += correct
                state.seen += len(index)
                if bar is not None:
                    elapsed = time.perf_counter() - started
                    bar.update(1)
                    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}",
                                    acc=f"{state.correct / state.seen:.4f}",
                                    img_s=f"{state.seen / max(elapsed, 1e-9):,.0f}")
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - started
        row = {"epoch": state.epoch + 1, "lr": self.optimizer.lr,
               "loss": state.loss_sum / state.seen, "accuracy": state.correct / state.seen}
        shown = f"loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        if len(self.x_val):  # no validation split (--val 0): no figures, not NaN
            val = self._measure(self.x_val, self.y_val)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            shown += f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  "
        row.update(seconds=seconds, images_per_s=state.seen / max(seconds, 1e-9))
        state.history.append(row)
        state.test = None  # measured again once the last epoch is done
        self.log(f"epoch {row['epoch']}/{config.epochs}  {shown}"
                 f"{row['images_per_s']:,.0f} img/s  {seconds:.1f} s")
        state.epoch += 1
        state.step, state.loss_sum, state.correct, state.seen, state.seconds = 0, 0.0, 0, 0, 0.0
        self._call("on_epoch_end", row["epoch"], dict(row))

    def _step(self, index: np.ndarray) -> tuple[float, int]:
        """One training step on the rows `index` of the training set: (mean loss, how many
        the network got right)."""
        x, y = self._batch(index), self.y_train[index]
        if self.engine is not None:
            return self.engine.step(x, y, self.state.epoch, self.state.step)
        loss, probs, grads = self.model.loss_and_grads(x, y)
        self.optimizer.step(grads)
        return loss, int((probs.argmax(axis=1) == y).sum())

    def _measure(self, x: np.ndarray, y: np.ndarray) -> dict:
        """A validation or test pass (`_loss_and_accuracy`), on the engine if there is one."""
        if self.engine is not None:
            return self.engine.evaluate(x, y)
        return _loss_and_accuracy(self.model, x, y)

    def _batch(self, index: np.ndarray) -> np.ndarray:
        """The training images of this step: x_train[index], augmented if the config says
        so, from (seed, epoch, step) alone (a resumed run sees the same batch)."""
        x = self.x_train[index]
        if not augment.active(self.config):
            return x
        rng = augment.batch_rng(self.config.seed, self.state.epoch, self.state.step)
        return augment.augment_batch(x, self.config, rng)

    def _running_row(self) -> dict:
        """The unfinished epoch's figures so far (what an interrupt reports)."""
        state = self.state
        row = {"epoch": state.epoch + 1, "step": state.step, "lr": self.optimizer.lr}
        if state.seen:
            row.update(loss=state.loss_sum / state.seen, accuracy=state.correct / state.seen)
        return row

    def _bar(self, batches: int):
        if not progress_shown(self.progress_bar):
            return None
        return progress_bar(batches, f"epoch {self.state.epoch + 1}/{self.config.epochs}",
                            "batch", initial=self.state.step)


# ---- the CLI's metrics files -----------------------------------------------------------

def metrics_paths(out: str) -> dict[str, Path]:
    base = Path(out)
    stem = base.with_suffix("")
    return {"csv": Path(f"{stem}.metrics.csv"), "json": Path(f"{stem}.metrics.json"),
            "png": Path(f"{stem}.curves.png")}


def write_metrics(out: str, state: Progress) -> None:
    """Per-epoch metrics as CSV and JSON, and loss/accuracy curves as PNG, beside `out`;
    each written atomically (`checkpoint.write_atomically`: a full disk is a
    CheckpointError and leaves the previous file)."""
    from cnndsl.history import write_csv

    paths = metrics_paths(out)
    if state.history:
        write_csv(paths["csv"], state.history, "metrics")
    document = {"epochs": state.history, "test": state.test}
    if state.changes:
        document["changes"] = state.changes
    if state.engine is not None:
        document["engine"] = state.engine
    checkpoint.write_atomically(paths["json"], _writer(json.dumps(document, indent=2)),
                                "metrics")
    plot_curves(state.history, paths["png"])


def _writer(text: str):
    return lambda handle: handle.write(text.encode("utf-8"))


def plot_curves(history: list, path: Path) -> None:
    """The loss and accuracy curves (`cnndsl.history.curves_figure`) as a PNG at `path`."""
    if not history:
        return
    from cnndsl.history import curves_figure, write_png

    write_png(curves_figure(history), path)
