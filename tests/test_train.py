"""Training: loss falls, runs are reproducible, resume is exact, checkpoints round-trip,
and the CLI's train / eval / predict work on small offline data."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

import cnndsl
from cnndsl import checkpoint
from cnndsl.cli import main
from cnndsl.model import Model
from cnndsl.train import Interrupted, Trainer
from cnndsl.trainconfig import TrainConfig

TINY = """network Tiny
input 8x8x1
train { optimizer = sgd, lr = 0.1, momentum = 0.9, batch = 16, epochs = 3, val = 0.2 }
Conv(4, 3) -> BatchNorm -> ReLU -> MaxPool(2) -> Dropout(0.2) -> FC(3) -> Softmax
"""


def synthetic(n=240, seed=0):
    """Three classes of 8x8 images: a bright row, column or diagonal, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    for i, label in enumerate(y):
        k = rng.integers(1, 7)
        if label == 0:
            x[i, k, :, 0] += 0.7
        elif label == 1:
            x[i, :, k, 0] += 0.7
        else:
            x[i, np.arange(8), np.arange(8), 0] += 0.7
    return x, y


@pytest.fixture
def npz(tmp_path):
    x, y = synthetic(240, 0)
    xt, yt = synthetic(60, 1)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def make_trainer(out, epochs=3, seed=0, text=TINY):
    model = Model(cnndsl.check_text(text), seed=seed)
    x, y = synthetic(240, 0)
    xt, yt = synthetic(60, 1)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch=16, epochs=epochs,
                         seed=seed, val=0.2)
    splits = (x[:192], y[:192], x[192:], y[192:], xt, yt)
    return Trainer(model, config, splits, str(out), {"architecture": text},
                   progress_bar=False, log=lambda line: None)


def test_loss_falls_and_accuracy_rises(tmp_path):
    trainer = make_trainer(tmp_path / "w.npz", epochs=4)
    state = trainer.run()
    losses = [row["loss"] for row in state.history]
    assert losses[-1] < 0.5 * losses[0]
    assert state.history[-1]["val_accuracy"] > 0.9
    assert state.test["accuracy"] > 0.9


def test_same_seed_same_weights_bit_for_bit(tmp_path):
    first = make_trainer(tmp_path / "a.npz")
    first.run()
    second = make_trainer(tmp_path / "b.npz")
    second.run()
    for name, array in first.model.parameters().items():
        assert np.array_equal(array, second.model.parameters()[name]), name


def test_resume_at_an_epoch_boundary_is_exact(tmp_path):
    straight = make_trainer(tmp_path / "straight.npz", epochs=3)
    straight.run()
    part = make_trainer(tmp_path / "part.npz", epochs=2)
    part.run()
    resumed = make_trainer(tmp_path / "part.npz", epochs=3)
    resumed.resume(str(tmp_path / "part.npz"))
    resumed.run()
    for name, array in straight.model.parameters().items():
        assert np.array_equal(array, resumed.model.parameters()[name]), name
    assert [r["loss"] for r in resumed.state.history] == \
        [r["loss"] for r in straight.state.history]


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path):
    interrupt_and_resume(tmp_path, TINY)


def test_runs_with_batches_cut_across_threads_resume_exactly(tmp_path, monkeypatch):
    """The same with each batch cut into one shard per thread (cnndsl.parallel), BatchNorm
    statistics and Dropout masks shared across the shards."""
    import cnndsl.model
    from cnndsl import parallel

    monkeypatch.setattr(parallel, "thread_count", lambda: 2)
    monkeypatch.setattr(cnndsl.model, "SMALL_NET_MACS", 0)  # cut even this small network
    straight = interrupt_and_resume(tmp_path, TINY)
    assert len(straight.model._shards(16)) == 2  # batch 16: really cut


def interrupt_and_resume(tmp_path, text):
    """Stop a run in the 2nd epoch as Ctrl-C does, resume it from its checkpoint in a new
    trainer: the weights equal those of a run never stopped, bit for bit."""
    straight = make_trainer(tmp_path / "straight.npz", text=text)
    straight.run()
    out = tmp_path / "stopped.npz"
    stopped = make_trainer(out, text=text)
    original = stopped.model.loss_and_grads
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 17:  # the 5th batch of the 2nd epoch: ask to stop, as Ctrl-C does
            stopped._stop = True
        return original(*args, **kwargs)

    stopped.model.loss_and_grads = counting
    with pytest.raises(Interrupted):
        stopped.run()
    _, meta = checkpoint.load(str(out))
    assert meta["progress"]["epoch"] == 1 and meta["progress"]["step"] == 5
    resumed = make_trainer(out, text=text)
    resumed.resume(str(out))
    resumed.run()
    for name, array in straight.model.parameters().items():
        assert np.array_equal(array, resumed.model.parameters()[name]), name
    for name, array in straight.model.buffers().items():
        assert np.array_equal(array, resumed.model.buffers()[name]), name
    return straight


def test_checkpoint_round_trip(tmp_path):
    model = Model(cnndsl.check_text(TINY), seed=3)
    path = tmp_path / "w.npz"
    checkpoint.save(str(path), model, meta={"architecture": TINY, "classes": ["a", "b", "c"]})
    arrays, meta = checkpoint.load(str(path))
    assert meta["classes"] == ["a", "b", "c"] and meta["architecture"] == TINY
    other = Model(cnndsl.check_text(TINY), seed=4)
    checkpoint.restore_model(other, arrays, meta, str(path))
    for name, array in model.parameters().items():
        assert np.array_equal(array, other.parameters()[name])
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed


@pytest.mark.parametrize("damage", ["truncate", "garbage", "plain_npz"])
def test_bad_weights_files_are_clear_errors(tmp_path, damage):
    model = Model(cnndsl.check_text(TINY))
    path = tmp_path / "w.npz"
    checkpoint.save(str(path), model)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, weights=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load(str(path))
    assert "w.npz" in caught.value.message


def test_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "w.npz"
    checkpoint.save(str(path), Model(cnndsl.check_text(TINY)))
    other = Model(cnndsl.check_text(TINY.replace("Conv(4, 3)", "Conv(5, 3)")))
    arrays, meta = checkpoint.load(str(path))
    with pytest.raises(checkpoint.CheckpointError,
                       match="conv1 \\(Conv\\) has filters=4 in w.npz but filters=5 here"):
        checkpoint.restore_model(other, arrays, meta, str(path))
    # --force skips the graph comparison, but weights that do not fit are still refused
    warnings = []
    with pytest.raises(checkpoint.CheckpointError, match="conv1.weight' is 4x1x3x3 there but "
                                                         "5x1x3x3 here"):
        checkpoint.restore_model(other, arrays, meta, str(path), force=True,
                                 warn=warnings.append)
    assert len(warnings) == 1 and "filters=4 in w.npz but filters=5 here" in warnings[0]


# ---- the command line -----------------------------------------------------------------------
def write_tiny(tmp_path):
    net = tmp_path / "tiny.cnn"
    net.write_text(TINY)
    return net


def test_cli_train_eval_predict(tmp_path, npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = write_tiny(tmp_path)
    assert main(["train", str(net), "--data", str(npz), "--no-progress", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "test accuracy" in out
    for name in ("tiny.npz", "tiny.metrics.csv", "tiny.metrics.json", "tiny.curves.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "tiny.curves.png").read_bytes()[:4] == b"\x89PNG"
    # an existing weights file is never overwritten by accident
    assert main(["train", str(net), "--data", str(npz), "--no-progress"]) == 1
    assert "--resume continues it" in capsys.readouterr().err
    # eval: accuracy, per-class accuracy, confusion matrix (text and PNG)
    assert main(["eval", str(net), "--weights", "tiny.npz", "--data", str(npz)]) == 0
    report = capsys.readouterr().out
    assert report.startswith("accuracy ") and "per-class accuracy" in report
    assert "confusion matrix" in report and (tmp_path / "tiny.confusion.png").exists()
    # predict: top-k classes of image files
    from PIL import Image

    x, _ = synthetic(2, 5)
    for i in range(2):
        Image.fromarray((x[i, :, :, 0] * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["predict", str(net), "--weights", "tiny.npz", "0.png", "1.png",
                 "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("0.png: ")
    assert len(lines[0].split(",")) == 2


def test_cli_flags_override_the_train_block(tmp_path, npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = write_tiny(tmp_path)
    assert main(["train", str(net), "--data", str(npz), "--no-progress", "--epochs", "1",
                 "--optimizer", "adamw", "--lr", "0.005", "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "1 epoch, adamw lr 0.005, batch 32" in out
    _, meta = checkpoint.load(str(tmp_path / "tiny.npz"))
    assert meta["config"]["optimizer"] == "adamw" and meta["config"]["batch"] == 32


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "rmsprop"], "optimizer must be one of sgd, adam, adamw"),
    (["--epochs", "0"], "epochs must be a whole number >= 1"),
    (["--val", "1.5"], "val must be a fraction"),
])
def test_cli_bad_flags_are_usage_errors(tmp_path, npz, argv, message, capsys):
    net = write_tiny(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(net), "--data", str(npz), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_data_that_does_not_fit_the_network(tmp_path, capsys):
    net = write_tiny(tmp_path)
    x = np.zeros((10, 9, 9, 1), np.float32)
    path = tmp_path / "big.npz"
    np.savez(path, x_train=x, y_train=np.zeros(10, int), x_test=x, y_test=np.zeros(10, int))
    assert main(["train", str(net), "--data", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnndsl: error: ") and "9x9x1" in err and "8x8x1" in err
    assert "Traceback" not in err
    assert main(["train", str(net), "--data", str(tmp_path / "missing"), "--no-progress"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_cli_train_block_errors_are_located(tmp_path, npz, capsys):
    net = tmp_path / "bad.cnn"
    net.write_text(TINY.replace("momentum = 0.9", "momentun = 0.9"))
    assert main(["train", str(net), "--data", str(npz), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "bad.cnn:3:" in err and "unknown training setting 'momentun'" in err
    assert "did you mean 'momentum'?" in err


def test_ctrl_c_saves_and_resume_finishes_the_same_run(tmp_path, npz):
    """A real SIGINT to `cnndsl train`, then --resume: the weights equal an uninterrupted
    run's bit for bit."""
    net = write_tiny(tmp_path)
    common = [sys.executable, "-m", "cnndsl", "train", str(net), "--data", str(npz),
              "--no-progress", "--epochs", "40"]
    subprocess.run([*common, "-o", str(tmp_path / "straight.npz")], check=True,
                   capture_output=True, cwd=tmp_path)
    stopped = tmp_path / "stopped.npz"
    process = subprocess.Popen([*common, "-o", str(stopped)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    while True:  # wait for the first epoch, so the kernels are compiled and training runs
        line = process.stdout.readline()
        if line.startswith("epoch 1/") or not line:
            break
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert process.returncode == 130, err
    assert "interrupted: saved to" in err and "--resume" in err and "Traceback" not in err
    subprocess.run([*common, "-o", str(stopped), "--resume"], check=True, capture_output=True,
                   cwd=tmp_path)
    straight, _ = checkpoint.load(str(tmp_path / "straight.npz"))
    resumed, _ = checkpoint.load(str(stopped))
    for key, array in straight.items():
        if key.startswith(("param/", "buffer/")):
            assert np.array_equal(array, resumed[key]), key


assert os and ROOT  # used by subprocess tests' environments


def test_weights_files_without_a_stored_graph_are_checked_from_their_text(tmp_path):
    """Files written before the graph was stored: their .cnn text is compiled and compared."""
    path = tmp_path / "w.npz"
    checkpoint.save(str(path), Model(cnndsl.check_text(TINY)), meta={"architecture": TINY})
    arrays, meta = checkpoint.load(str(path))
    del meta["graph"]
    same = Model(cnndsl.check_text("# edited\n" + TINY))
    checkpoint.restore_model(same, arrays, meta, str(path))
    other = Model(cnndsl.check_text(TINY.replace("ReLU", "Tanh")))
    with pytest.raises(checkpoint.CheckpointError, match="relu1 is ReLU in w.npz but Tanh"):
        checkpoint.restore_model(other, arrays, meta, str(path))
    del meta["architecture"]
    with pytest.raises(checkpoint.CheckpointError, match="does not say which network"):
        checkpoint.restore_model(same, arrays, meta, str(path))
