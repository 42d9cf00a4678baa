"""`Model.fit` / `evaluate` / `predict` and the callbacks (issue 13): one engine with
`cnndsl train` — the same data, seed and settings give the CLI's weights bit for bit, and
a checkpoint written from Python is the CLI's file (eval loads it, --resume continues it)."""

import json
import os
import signal
import struct

import numpy as np
import pytest
from test_train import TINY, synthetic

import cnndsl
from cnndsl import checkpoint
from cnndsl.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    MissingPackageError,
    ModelCheckpoint,
    TensorBoard,
)
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.fit import ArrayError
from cnndsl.history import History
from cnndsl.train import Interrupted
from cnndsl.trainconfig import SettingError

# TINY's train block: sgd, lr 0.1, momentum 0.9, batch 16, epochs 3, val 0.2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """tiny.cnn and data.npz (240 training, 60 test images of 3 classes)."""
    folder = tmp_path_factory.mktemp("fit")
    (folder / "tiny.cnn").write_text(TINY)
    (x, y), (xt, yt) = synthetic(240, 0), synthetic(60, 1)
    np.savez(folder / "data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    return folder


@pytest.fixture(scope="module")
def cli_run(folder):
    """`cnndsl train tiny.cnn --data data.npz --epochs 2` (in-process): its weights file."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["train", "tiny.cnn", "--data", "data.npz", "--epochs", "2",
                     "--no-progress", "-o", "cli2.npz"]) == 0
    finally:
        os.chdir(cwd)
    return folder / "cli2.npz"


def arrays_of(path) -> dict:
    arrays, _ = checkpoint.load(str(path))
    return arrays


def assert_same_arrays(first: dict, second: dict) -> None:
    assert sorted(first) == sorted(second)
    assert any(key.startswith("optim/") for key in first)  # the optimizer state too
    for key, array in first.items():
        assert array.dtype == second[key].dtype and np.array_equal(array, second[key]), key


# ---- one engine: bit for bit the CLI's run -----------------------------------------------

def test_fit_on_the_dataset_gives_the_cli_weights_bit_for_bit(folder, cli_run, tmp_path):
    model = cnndsl.load(folder / "tiny.cnn")
    history = model.fit(cnndsl.datasets.load(folder / "data.npz"), epochs=2, verbose=False,
                        callbacks=[ModelCheckpoint(tmp_path / "py.npz")])
    assert_same_arrays(arrays_of(cli_run), arrays_of(tmp_path / "py.npz"))
    # the same run described the same way: settings, data, fingerprint, train block
    _, cli_meta = checkpoint.load(str(cli_run))
    _, py_meta = checkpoint.load(str(tmp_path / "py.npz"))
    for key in ("config", "train_block", "classes", "name", "input_shape"):
        assert py_meta[key] == cli_meta[key], key
    assert py_meta["run_data"]["fingerprint"] == cli_meta["run_data"]["fingerprint"]
    # and the same figures per epoch as the CLI's metrics (time aside)
    rows = json.loads((folder / "cli2.metrics.json").read_text())["epochs"]
    timeless = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                for row in rows]
    assert [{k: row[k] for k in timeless[0]} for row in history.rows] == timeless


def test_fit_on_arrays_gives_the_same_weights(folder, cli_run, tmp_path):
    with np.load(folder / "data.npz") as saved:
        x, y = saved["x_train"], saved["y_train"]
    model = cnndsl.compile(TINY)
    model.fit(x, y, epochs=2, verbose=False, callbacks=[ModelCheckpoint(tmp_path / "a.npz")])
    assert_same_arrays(arrays_of(cli_run), arrays_of(tmp_path / "a.npz"))


def test_a_fit_checkpoint_is_resumed_by_the_cli_exactly(folder, tmp_path, monkeypatch):
    """Two epochs from Python, the third by `cnndsl train --resume`: the weights of three
    epochs straight from the CLI."""
    monkeypatch.chdir(folder)
    assert main(["train", "tiny.cnn", "--data", "data.npz", "--no-progress",
                 "-o", str(tmp_path / "cli3.npz")]) == 0
    model = cnndsl.load("tiny.cnn")
    model.fit(cnndsl.datasets.load("data.npz"), epochs=2, verbose=False,
              callbacks=[ModelCheckpoint(tmp_path / "py.npz")])
    assert main(["train", "tiny.cnn", "-o", str(tmp_path / "py.npz"), "--resume",
                 "--epochs", "3", "--no-progress"]) == 0  # data: the one the file names
    assert_same_arrays(arrays_of(tmp_path / "cli3.npz"), arrays_of(tmp_path / "py.npz"))


def test_a_fit_checkpoint_loads_with_cnndsl_eval(folder, tmp_path, capsys):
    model = cnndsl.load(folder / "tiny.cnn")
    model.fit(cnndsl.datasets.load(folder / "data.npz"), epochs=1, verbose=False,
              callbacks=[ModelCheckpoint(tmp_path / "w.npz")])
    capsys.readouterr()
    # no FILE: the network's text was stored by cnndsl.load
    assert main(["eval", "--weights", str(tmp_path / "w.npz"), "--data",
                 str(folder / "data.npz")]) == 0
    report = capsys.readouterr().out
    expected = model.evaluate(cnndsl.datasets.load(folder / "data.npz"))
    assert report.startswith(f"accuracy {expected['accuracy']:.4f} (")
    assert (tmp_path / "w.confusion.png").exists()


# ---- settings --------------------------------------------------------------------------

class Seen(Callback):
    """Records the run's settings and the events it saw."""

    def __init__(self):
        self.events = []

    def on_train_begin(self, logs):
        self.config = self.trainer.config
        self.events.append("begin")

    def on_epoch_begin(self, epoch, logs):
        self.events.append(f"epoch {epoch} lr {logs['lr']:g}")

    def on_epoch_end(self, epoch, logs):
        self.events.append(f"end {epoch} {sorted(logs)}")

    def on_train_end(self, logs):
        self.events.append(f"done {logs['epoch']}")


def data(n=120, seed=0):
    return synthetic(n, seed)


def test_settings_come_from_the_train_block_then_from_fit():
    seen = Seen()
    cnndsl.compile(TINY).fit(*data(), epochs=1, lr=0.05, verbose=False, callbacks=[seen])
    config = seen.config
    assert (config.optimizer, config.momentum, config.batch, config.val) == ("sgd", 0.9, 16, 0.2)
    assert (config.epochs, config.lr) == (1, 0.05)
    plain = TINY.replace("train { optimizer = sgd, lr = 0.1, momentum = 0.9, batch = 16, "
                         "epochs = 3, val = 0.2 }\n", "")
    seen = Seen()
    cnndsl.compile(plain).fit(*data(), epochs=1, verbose=False, callbacks=[seen])
    assert (seen.config.optimizer, seen.config.learning_rate, seen.config.batch,
            seen.config.val) == ("adam", 0.001, 64, 0.1)  # the CLI's defaults


def test_callbacks_see_every_event_in_order():
    seen = Seen()
    cnndsl.compile(TINY).fit(*data(), epochs=2, schedule="step", step_size=1, gamma=0.5,
                             verbose=False, callbacks=[seen])
    keys = ["accuracy", "epoch", "images_per_s", "loss", "lr", "seconds", "val_accuracy",
            "val_loss"]
    assert seen.events == ["begin", "epoch 1 lr 0.1", f"end 1 {keys}", "epoch 2 lr 0.05",
                           f"end 2 {keys}", "done 2"]


@pytest.mark.parametrize("arguments, message", [
    ({"lr": -1}, "lr must be positive, got -1"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, adamw"),
    ({"epochs": 0}, "epochs must be a whole number >= 1"),
    ({"validation_split": 1.5}, "validation_split must be a fraction in [0, 1), got 1.5"),
    ({"schedule": "cosinus"}, "did you mean 'cosine'?"),
    ({"nesterov": "yes"}, "nesterov must be true or false"),
    ({"validation_split": 0.2, "validation_data": data(10, 3)},
     "give validation_data or validation_split, not both"),
])
def test_bad_settings_are_errors_before_training(arguments, message):
    model = cnndsl.compile(TINY)
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(SettingError) as caught:
        model.fit(*data(), verbose=False, **arguments)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, CnnDslError)
    assert all(np.array_equal(before[k], v) for k, v in model.parameters().items())


def test_numpy_scalars_are_settings_too():
    seen = Seen()
    cnndsl.compile(TINY).fit(*data(), epochs=np.int64(1), lr=np.float32(0.5), verbose=False,
                             callbacks=[seen])
    assert seen.config.epochs == 1 and seen.config.lr == 0.5


# ---- data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("x, y, message", [
    (np.zeros((10, 9, 9, 1)), np.zeros(10, int), ("x must be (N, 8, 8, 1) for Tiny's input, "
                                                 "got (10, 9, 9, 1)")),
    (np.zeros((10, 8, 8, 1)), np.zeros(9, int), "y must be (10,): one class index per example"),
    (np.zeros((10, 8, 8, 1)), np.eye(3)[np.zeros(10, int)], "np.argmax(y, axis=1)"),
    (np.zeros((10, 8, 8, 1)), np.full(10, 3), ("y holds the label 3 (example 0), but Tiny has "
                                              "3 outputs: classes 0..2")),
    (np.zeros((10, 8, 8, 1)), np.full(10, -1), "y holds the label -1"),
    (np.zeros((10, 8, 8, 1)), np.full(10, 0.5), "y must hold class indices"),
    (np.full((10, 8, 8, 1), np.nan), np.zeros(10, int), "x holds NaN or infinite values"),
    (np.zeros((0, 8, 8, 1)), np.zeros(0, int), "x holds no examples"),
    (np.array([["a"] * 64] * 2).reshape(2, 8, 8, 1), np.zeros(2, int), "x must hold numbers"),
])
def test_arrays_the_network_cannot_take_are_clear_errors(x, y, message):
    with pytest.raises(ArrayError) as caught:
        cnndsl.compile(TINY).fit(x, y, verbose=False)
    assert message in str(caught.value) + str(caught.value.hint)
    assert isinstance(caught.value, ValueError)


def test_missing_labels_and_a_missing_channel_axis():
    model = cnndsl.compile(TINY)
    with pytest.raises(TypeError, match="needs the labels y"):
        model.fit(np.zeros((10, 8, 8, 1)), verbose=False)
    x, y = data(40)
    history = model.fit(x[..., 0], y.astype(float), epochs=1, verbose=False)  # (N, 8, 8)
    assert len(history) == 1


def test_validation_data_or_none():
    x, y = data(120)
    xv, yv = data(30, 7)
    history = cnndsl.compile(TINY).fit(x, y, epochs=1, validation_data=(xv, yv),
                                       verbose=False)
    model = cnndsl.compile(TINY)
    model.fit(x, y, epochs=1, validation_split=0, verbose=False)  # also all of x
    expected = model.evaluate(xv, yv)
    assert history["val_loss"] == [expected["loss"]]
    assert history["val_accuracy"] == [expected["accuracy"]]
    none = cnndsl.compile(TINY).fit(x, y, epochs=1, validation_split=0, verbose=False)
    assert "val_loss" not in none.columns
    with pytest.raises(KeyError, match="no validation data"):
        none["val_accuracy"]


# ---- evaluate and predict ------------------------------------------------------------------

def test_evaluate_and_predict_agree():
    model = cnndsl.compile(TINY)
    model.fit(*data(), epochs=2, verbose=False)
    x, y = data(50, 9)
    probs = model.predict(x, batch=7)
    assert probs.shape == (50, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    result = model.evaluate(x, y, batch=11)
    assert sorted(result) == ["accuracy", "confusion", "loss", "per_class"]
    assert result["accuracy"] == np.mean(probs.argmax(axis=1) == y)
    assert result["loss"] == pytest.approx(-np.log(probs[np.arange(50), y]).mean(), rel=1e-5)
    matrix = result["confusion"]
    assert matrix.shape == (3, 3) and matrix.sum() == 50 and matrix.dtype == np.int64
    assert np.array_equal(matrix.sum(axis=1), np.bincount(y, minlength=3))
    assert result["per_class"] == [matrix[k, k] / matrix[k].sum() for k in range(3)]
    with pytest.raises(SettingError, match="batch must be a whole number >= 1"):
        model.predict(x, batch=0)


# ---- callbacks ------------------------------------------------------------------------------

def test_early_stopping_stops_and_restores_the_best_weights():
    """Monitoring the training loss as if higher were better: epoch 1 stays the best, so
    with patience 1 the run stops after epoch 2 and gets epoch 1's weights back."""
    x, y = data()
    stopper = EarlyStopping(monitor="loss", mode="max", patience=1)
    model = cnndsl.compile(TINY)
    history = model.fit(x, y, epochs=5, verbose=False, callbacks=[stopper])
    assert history.epochs == [1, 2] and history.stopped_early
    assert (stopper.best_epoch, stopper.stopped_epoch) == (1, 2)
    once = cnndsl.compile(TINY)
    once.fit(x, y, epochs=1, verbose=False)
    for name, array in {**once.parameters(), **once.buffers()}.items():
        assert np.array_equal(array, {**model.parameters(), **model.buffers()}[name]), name


def test_early_stopping_that_never_triggers_runs_every_epoch():
    stopper = EarlyStopping(monitor="val_loss", patience=5)
    history = cnndsl.compile(TINY).fit(*data(), epochs=2, verbose=False, callbacks=[stopper])
    assert len(history) == 2 and not history.stopped_early and stopper.stopped_epoch is None
    assert stopper.mode == "min"


def test_early_stopping_on_a_metric_the_run_lacks():
    with pytest.raises(CnnDslError, match="monitors 'val_accuracy', which this run does not "
                                          "measure") as caught:
        cnndsl.compile(TINY).fit(*data(), epochs=2, validation_split=0, verbose=False,
                                 callbacks=[EarlyStopping()])
    assert "validation_split" in caught.value.hint


def test_csv_logger_writes_the_history(tmp_path):
    history = cnndsl.compile(TINY).fit(*data(), epochs=2, verbose=False,
                                       callbacks=[CSVLogger(tmp_path / "log.csv")])
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,loss,accuracy,val_loss,val_accuracy,seconds,images_per_s"
    assert len(lines) == 3 and lines[1].startswith("1,0.1,")
    assert float(lines[2].split(",")[2]) == history["loss"][1]
    history.to_csv(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "log.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.csv", "log.csv"]  # no debris


def read_scalars(folder) -> dict:
    """{tag: [(step, value)]} of the TensorBoard event files in `folder`, read record by
    record (TFRecord: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_writes_event_files_with_the_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    history = cnndsl.compile(TINY).fit(*data(), epochs=2, verbose=False,
                                       callbacks=[TensorBoard(tmp_path / "runs")])
    train = read_scalars(tmp_path / "runs" / "train")
    validation = read_scalars(tmp_path / "runs" / "validation")
    assert sorted(train) == ["accuracy", "loss", "lr"] and sorted(validation) == ["accuracy",
                                                                                  "loss"]
    for tag, key, scalars in (("loss", "loss", train), ("accuracy", "accuracy", train),
                              ("lr", "lr", train), ("loss", "val_loss", validation),
                              ("accuracy", "val_accuracy", validation)):
        assert [step for step, _ in scalars[tag]] == [1, 2]
        assert [value for _, value in scalars[tag]] == pytest.approx(history[key], rel=1e-6)


def test_tensorboard_without_tensorboardx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # not importable
    with pytest.raises(MissingPackageError) as caught:
        TensorBoard("runs")
    assert "needs the tensorboardX package" in caught.value.message
    assert "pip install 'cnndsl[tensorboard]'" in caught.value.hint
    assert isinstance(caught.value, ImportError)


def test_ctrl_c_in_fit_ends_the_batch_saves_and_raises(tmp_path, monkeypatch):
    model = cnndsl.compile(TINY)
    real = model.loss_and_grads
    calls = []

    def counting(x, *args, **kwargs):
        if len(x) > 2:  # not the step cnndsl.warmup traces on a copy of the model
            calls.append(1)
        if len(calls) == 9:  # the 3rd batch of the 2nd epoch (6 batches an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model, "loss_and_grads", counting)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as caught:
        model.fit(*data(), epochs=3, verbose=False,
                  callbacks=[ModelCheckpoint(tmp_path / "w.npz")])
    assert isinstance(caught.value, Interrupted) and caught.value.signum == signal.SIGINT
    assert caught.value.history.epochs == [1]
    assert signal.getsignal(signal.SIGINT) == previous
    _, meta = checkpoint.load(str(tmp_path / "w.npz"))
    assert (meta["progress"]["epoch"], meta["progress"]["step"]) == (1, 3)


# ---- progress and output -----------------------------------------------------------------------

def test_output_lines_and_progress_bars(capsys):
    model = cnndsl.compile(TINY)
    model.fit(*data(), epochs=1)  # verbose, no bar: stderr is not a terminal here
    out, err = capsys.readouterr()
    assert out.startswith("training Tiny (243 parameters) on the given arrays: 96 images, "
                          "24 held out, 1 epoch, sgd lr 0.1, batch 16, seed 0\nepoch 1/1  loss ")
    assert "batch" not in err
    model.fit(*data(), epochs=1, verbose=False, progress=True)  # asked for: a bar anyway
    out, err = capsys.readouterr()
    assert out == "" and "epoch 1/1" in err and "6/6" in err and "img_s=" in err
    model.fit(*data(), epochs=1, verbose=False, progress=False)
    assert capsys.readouterr() == ("", "")


def test_history_plot_and_repr(tmp_path):
    history = cnndsl.compile(TINY).fit(*data(), epochs=2, verbose=False)
    assert repr(history).startswith("<History: 2 epochs; last: loss ")
    figure = history.plot()
    assert [axis.get_title() for axis in figure.axes] == ["loss", "accuracy"]
    assert len(figure.axes[0].lines) == 2  # train and validation
    history.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no epochs"):
        History([]).plot()
