"""Callbacks: code the training loop (cnndsl.train.Trainer, behind `Model.fit` and
`cnndsl train`) calls at a run's events.

    model.fit(x, y, callbacks=[EarlyStopping(patience=3), ModelCheckpoint("w.npz"),
                               CSVLogger("log.csv"), TensorBoard("runs/lenet")])

A callback's `trainer` (set before `on_train_begin`) is the run: `trainer.model`,
`.config` (the TrainConfig), `.state` (epochs done, `.history` rows), `.optimizer`.
Setting `trainer.stop_training = True` (or calling `self.stop()`) ends the run after the
current epoch. `epoch` counts from 1, as the history and the CLI's lines do; `logs` is
the epoch's history row (`loss`, `accuracy`, `val_loss`, `val_accuracy`, `lr`, `seconds`,
`images_per_s`).
"""

from __future__ import annotations

import math
from pathlib import Path

from cnndsl.errors import CnnDslError


class Callback:
    """Does nothing at every event; override the ones you need."""

    trainer = None

    @property
    def model(self):
        return self.trainer.model

    def stop(self) -> None:
        """End the run after the current epoch."""
        self.trainer.stop_training = True

    def on_train_begin(self, logs: dict) -> None:
        """Before the first epoch (`logs`: the last row of a resumed run, else empty)."""

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        """Before epoch `epoch`'s first batch (`logs`: its learning rate, `lr`)."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """After epoch `epoch` and its validation pass; `logs` is its history row."""

    def on_test_end(self, logs: dict) -> None:
        """After the test split was measured at the end of the run (the CLI's test pass;
        `fit` has none): `logs` holds its `loss` and `accuracy`."""

    def on_interrupt(self, logs: dict) -> None:
        """Ctrl-C or SIGTERM stopped the run at the end of a batch, in the middle of epoch
        `logs["epoch"]`; Interrupted (a KeyboardInterrupt) is raised next."""

    def on_train_end(self, logs: dict) -> None:
        """After the last epoch (or the one a callback stopped at); `logs` is its row."""


class MissingPackageError(CnnDslError, ImportError):
    """An optional package a feature needs is not installed (the hint says how)."""


# ---- early stopping -----------------------------------------------------------------------

class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    `mode`: "max" (better is higher), "min", or "auto" (max for accuracies, min for
    losses). With `restore_best`, the model gets back the weights (and BatchNorm
    statistics) of its best epoch when the run ends. `best`, `best_epoch` and
    `stopped_epoch` (None if it never stopped the run) tell what happened."""

    def __init__(self, monitor: str = "val_accuracy", patience: int = 3, mode: str = "auto",
                 min_delta: float = 0.0, restore_best: bool = True):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be auto, min or max, got {mode!r}")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"patience must be a whole number >= 0, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best = restore_best
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.best = self.best_epoch = self.stopped_epoch = None
        self._weights = None
        self._waited = 0

    def on_train_begin(self, logs: dict) -> None:
        self.best = self.best_epoch = self.stopped_epoch = None
        self._weights, self._waited = None, 0

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor not in logs:
            measured = [k for k in logs if k not in ("epoch", "seconds", "images_per_s")]
            hint = ("this run has no validation data: give fit validation_split or "
                    "validation_data" if self.monitor.startswith("val_") else None)
            raise CnnDslError(f"EarlyStopping monitors '{self.monitor}', which this run "
                              f"does not measure (it measures {', '.join(measured)})",
                              hint=hint)
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._waited = value, epoch, 0
            if self.restore_best:
                self._weights = _copy_weights(self.model)
            return
        self._waited += 1
        if self._waited >= self.patience:
            self.stopped_epoch = epoch
            self.stop()

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_train_end(self, logs: dict) -> None:
        if self.restore_best and self._weights is not None and \
                self.best_epoch != self.trainer.state.epoch:
            _restore_weights(self.model, self._weights)


def _copy_weights(model) -> dict:
    return {name: array.copy() for name, array in
            {**model.parameters(), **model.buffers()}.items()}


def _restore_weights(model, saved: dict) -> None:
    for name, array in {**model.parameters(), **model.buffers()}.items():
        array[...] = saved[name]  # into the model's own arrays: the runners share them


# ---- files --------------------------------------------------------------------------------

class ModelCheckpoint(Callback):
    """After every epoch (and when Ctrl-C or SIGTERM stops a run), save the run to `path`:
    the weights file `cnndsl train -o` writes (weights, optimizer state, settings,
    progress, random state; atomically, so a crash never leaves half a file). `cnndsl eval
    --weights`, `predict`, `Model.load_weights` load it; `cnndsl train FILE -o PATH
    --resume` continues the run (with the data the file names, `cnndsl.datasets.load`'s
    spec; arrays given to fit are no file: name them with --data and --allow-changes)."""

    def __init__(self, path):
        self.path = str(path)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.trainer.save(self.path)

    def on_interrupt(self, logs: dict) -> None:
        self.trainer.save(self.path)

    def on_test_end(self, logs: dict) -> None:
        self.trainer.save(self.path)  # with the test result in its progress


class MetricsFiles(Callback):
    """`cnndsl train`'s metrics beside the weights file `out`: `W.metrics.csv`,
    `W.metrics.json` (with the test result and the resume changes) and `W.curves.png`,
    rewritten (atomically) after every epoch."""

    def __init__(self, out):
        self.out = str(out)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._write()

    def on_test_end(self, logs: dict) -> None:
        self._write()

    def _write(self) -> None:
        from cnndsl.train import write_metrics

        write_metrics(self.out, self.trainer.state)


class CSVLogger(Callback):
    """The history as CSV at `path` (the columns of `cnndsl train`'s W.metrics.csv),
    rewritten atomically after every epoch: a reader never sees half a line."""

    def __init__(self, path):
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        from cnndsl.history import write_csv

        write_csv(self.path, self.trainer.state.history, "the log")


class TensorBoard(Callback):
    """TensorBoard event files in `log_dir` (`tensorboard --logdir LOG_DIR`): per epoch,
    `loss`, `accuracy` and `lr` in `LOG_DIR/train`, `loss` and `accuracy` in
    `LOG_DIR/validation`, so TensorBoard draws train and validation in one chart. Written
    with tensorboardX (`pip install 'cnndsl[tensorboard]'`); event files are appended
    record by record, as TensorBoard reads them."""

    def __init__(self, log_dir="runs"):
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise MissingPackageError(
                "the TensorBoard callback needs the tensorboardX package, which is not "
                "installed", hint="pip install 'cnndsl[tensorboard]' (or pip install "
                                  "tensorboardX)") from None
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _writer(self, run: str):
        if run not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[run] = SummaryWriter(str(self.log_dir / run))
        return self._writers[run]

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        for key, run, tag in (("loss", "train", "loss"), ("accuracy", "train", "accuracy"),
                              ("lr", "train", "lr"), ("val_loss", "validation", "loss"),
                              ("val_accuracy", "validation", "accuracy")):
            if key in logs:
                self._writer(run).add_scalar(tag, float(logs[key]), epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_interrupt(self, logs: dict) -> None:
        self._close()

    def on_train_end(self, logs: dict) -> None:
        self._close()

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

