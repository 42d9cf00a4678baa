"""`Model.fit`, `Model.evaluate` and `Model.predict`: NumPy arrays or a dataset in, the
training loop of `cnndsl train` (cnndsl.train.Trainer) and its evaluation behind them.

Settings are `cnndsl train`'s (cnndsl.trainconfig.TrainConfig): the defaults, then the
file's `train { }` block, then fit's arguments; each checked as the CLI checks its flags.
So a file trains the same from Python as from the command line, bit for bit: the same
seed gives the same initial weights (`cnndsl.compile`/`load` take the train block's
seed), the same validation split, the same shuffles and dropout masks.
"""

from __future__ import annotations

import warnings

import numpy as np

from cnndsl.augment import SETTINGS as AUGMENT_SETTINGS
from cnndsl.data import DataError, Dataset, check_against, fingerprint, split_validation
from cnndsl.errors import did_you_mean
from cnndsl.history import History
from cnndsl.train import (
    EVAL_BATCH,
    Interrupted,
    Trainer,
    check_memory,
    checkpoint_meta,
    compile_kernels,
    describe_run,
)
from cnndsl.trainconfig import SettingError, configured


class ArrayError(DataError, ValueError):
    """Arrays given to fit, evaluate or predict that the network cannot take."""


def fit(model, x, y=None, *, epochs=None, batch=None, optimizer=None, lr=None, momentum=None,
        nesterov=None, weight_decay=None, schedule=None, step_size=None, gamma=None,
        seed=None, validation_split=None, validation_data=None, augment=None, callbacks=(),
        progress=None, verbose=True) -> History:
    """Train `model` on x: (N, *input) and integer labels y: (N,), or on a dataset's train
    split (`fit(cnndsl.datasets.load("mnist"))`); see `Model.fit`. `augment`: a dict of
    the train block's augmentation settings (`{"shift": 2, "flip": True}`, cnndsl.augment),
    each replacing the file's; False: none, whatever the file says; None: the file's."""
    given = {"epochs": epochs, "batch": batch, "optimizer": optimizer, "lr": lr,
             "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
             "schedule": schedule, "step_size": step_size, "gamma": gamma, "seed": seed,
             "val": validation_split, **augment_settings(augment)}
    if validation_data is not None:
        if validation_split:
            raise SettingError("give validation_data or validation_split, not both")
        given["val"] = 0.0  # nothing held out of x: the validation data are given
    config = configured(model.graph.graph.get("train_settings") or {}, given,
                        {"val": "validation_split",
                         **{name: f"augment['{name}']" for name in AUGMENT_SETTINGS}})
    run = _TrainingRun(model, x, y, config, validation_data)
    say = (lambda line: print(line, flush=True)) if verbose else None
    trainer = Trainer(model, config, run.splits, meta=run.meta, progress_bar=progress,
                      log=say, callbacks=callbacks)
    n_train, n_val = len(run.splits[0]), len(run.splits[2])
    check_memory(model, min(config.batch, n_train), train=True)
    if verbose:
        print(describe_run(model, config, run.source, n_train, n_val), flush=True)
    compile_kernels(model, config.batch, train=True, progress=progress,
                    say=None if verbose else (lambda line: None))
    try:
        trainer.run()
    except Interrupted as interrupt:
        interrupt.history = History(trainer.state.history)  # what was done before it
        raise
    stopped = trainer.stop_training and trainer.state.epoch < config.epochs
    return History(trainer.state.history, stopped_early=stopped)


def augment_settings(augment) -> dict:
    """fit's `augment` argument as settings: None -> none given, False -> all off, a dict
    -> its settings (each checked later as a flag is)."""
    from cnndsl.augment import OFF

    if augment is None:
        return {}
    if augment is False:
        return dict(OFF)
    if not isinstance(augment, dict):
        raise SettingError(f"augment must be a dict of settings or False, got {augment!r}",
                           hint="e.g. augment={'shift': 2, 'flip': True}; the names are "
                                f"{', '.join(AUGMENT_SETTINGS)}")
    for name in augment:
        if name not in AUGMENT_SETTINGS:
            raise SettingError(f"unknown augmentation setting {name!r}",
                               hint=did_you_mean(str(name), AUGMENT_SETTINGS) or
                               f"the settings: {', '.join(AUGMENT_SETTINGS)}")
    return dict(augment)


class _TrainingRun:
    """The splits (x_train, y_train, x_val, y_val, x_test, y_test) fit trains on (the test
    split empty: fit measures nothing else), what the header line calls the data, and the
    metadata a checkpoint records so that `cnndsl train --resume` finds the data again."""

    def __init__(self, model, x, y, config, validation_data):
        if isinstance(x, Dataset):
            if y is not None:
                raise TypeError("fit(dataset) takes no y: the labels are the dataset's")
            for warning in check_against(x, model.input_shape, model.output_shape):
                warnings.warn(warning, stacklevel=4)
            x_all, y_all = x.x_train, x.y_train
            test = (x.x_test, x.y_test)  # not trained on: for the fingerprint only
            limit = getattr(x, "limit", None)
            spec = getattr(x, "spec", "") or x.source
            classes = list(x.classes)
            self.source = x.source + (f" (limit {limit})" if limit else "")
        else:
            if y is None:
                raise TypeError("fit(x, y) needs the labels y (or give a dataset: "
                                "cnndsl.datasets.load)")
            x_all, y_all = labelled(model, x, y, "x", "y")
            test = (x_all[:0], y_all[:0])
            limit = spec = classes = None
            self.source = "the given arrays"
        if validation_data is not None:
            x_val, y_val = _validation(model, validation_data)
            parts = (x_all, y_all, x_val, y_val)
        else:
            parts = split_validation(x_all, y_all, config.val, config.seed)
        self.splits = (*parts, test[0][:0], test[1][:0])
        self.meta = checkpoint_meta(model, classes=classes, data=spec, limit=limit,
                                    fingerprint=fingerprint(*parts, *test))


def _validation(model, validation_data):
    if isinstance(validation_data, Dataset):  # its test split
        check_against(validation_data, model.input_shape, model.output_shape)
        return validation_data.x_test, validation_data.y_test
    try:
        x_val, y_val = validation_data
    except (TypeError, ValueError):
        raise TypeError("validation_data must be (x, y) or a dataset (its test split is "
                        "used)") from None
    return labelled(model, x_val, y_val, "validation_data x", "validation_data y")


# ---- evaluation and prediction ------------------------------------------------------------

def evaluate(model, x, y=None, batch: int = EVAL_BATCH) -> dict:
    """`loss`, `accuracy`, `per_class` and `confusion` of `model` on x, y (a dataset: its
    test split), and `top5` with more than 5 classes (the dataset's, else the network's
    outputs); see `Model.evaluate` and cnndsl.train.evaluate."""
    from cnndsl.train import evaluate as measure

    _check_batch(batch)
    if isinstance(x, Dataset):
        if y is not None:
            raise TypeError("evaluate(dataset) takes no y: the labels are the dataset's")
        check_against(x, model.input_shape, model.output_shape)
        check_memory(model, min(batch, max(1, len(x.x_test))), train=False)
        return measure(model, x.x_test, x.y_test, batch, classes=len(x.classes))
    x, y = labelled(model, x, y, "x", "y")
    check_memory(model, min(batch, len(x)), train=False)
    return measure(model, x, y, batch)


def predict(model, x, batch: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, K) of x: (N, *input); see `Model.predict`."""
    from cnndsl.train import predict as probabilities

    _check_batch(batch)
    x = examples(model, x, "x")
    check_memory(model, min(batch, len(x)), train=False)
    return probabilities(model, x, batch)


def _check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise SettingError(f"batch must be a whole number >= 1, got {batch!r}")


# ---- checking arrays ----------------------------------------------------------------------

def examples(model, x, what: str) -> np.ndarray:
    """x as the network takes it: (N, *input) in its dtype, contiguous. An input whose last
    axis is 1 also takes (N, *input without it), as `cnndsl train` takes data files."""
    x = np.asarray(x)
    want = tuple(model.input_shape)
    if x.dtype.kind not in "biuf":
        raise ArrayError(f"{what} must hold numbers, got an array of {x.dtype}")
    if x.shape[1:] + (1,) == want:
        x = x[..., None]
    if x.ndim != len(want) + 1 or x.shape[1:] != want:
        raise ArrayError(f"{what} must be (N, {', '.join(map(str, want))}) for {model.name}'s "
                         f"input, got {x.shape}",
                         hint="one example is shaped as the network's `input` declares it, "
                              "channels last")
    if len(x) == 0:
        raise ArrayError(f"{what} holds no examples")
    x = np.ascontiguousarray(x, dtype=model.dtype)
    if not np.isfinite(x).all():
        raise ArrayError(f"{what} holds NaN or infinite values")
    return x


def labelled(model, x, y, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) checked: x as `examples` says, y one class index per example (int64), each
    one of the network's outputs."""
    x = examples(model, x, x_name)
    if y is None:
        raise TypeError(f"{y_name} is missing: give one class index per example")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (len(x),):
        raise ArrayError(f"{y_name} must be ({len(x)},): one class index per example of "
                         f"{x_name}, got {y.shape}",
                         hint="for one-hot labels give np.argmax(y, axis=1)"
                         if y.ndim == 2 else None)
    integral = y.dtype.kind in "iub" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all())
    if not integral:
        raise ArrayError(f"{y_name} must hold class indices (whole numbers), got {y.dtype}")
    outputs = model.output_shape
    if len(outputs) != 1:
        shape = "x".join(map(str, outputs))
        raise ArrayError(f"{model.name}'s output is {shape}, not a flat vector of class "
                         "scores", hint="end the network with FC(K) (and Softmax) for K "
                                        "classes")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= outputs[0]:
        bad = low if low < 0 else high
        where = int(np.argmin(y)) if low < 0 else int(np.argmax(y))
        raise ArrayError(f"{y_name} holds the label {bad} (example {where}), but {model.name} "
                         f"has {outputs[0]} outputs: classes 0..{outputs[0] - 1}")
    return x, y.astype(np.int64)
