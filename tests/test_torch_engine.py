"""`cnndsl train --engine torch`: the steps run through the generated PyTorch module, in one
process or as DistributedDataParallel ranks (gloo on CPU), with cnndsl's own loop, data,
metrics and `.npz` checkpoint. The weights evaluate in the Numba engine as torch reported,
one process and two give the same curve, resume is exact, and flag errors are clean."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from test_train import synthetic

import cnndsl
from cnndsl import checkpoint
from cnndsl.cli import main
from cnndsl.model import Model

torch = pytest.importorskip("torch")

FASHION = "/usr/share/datasets/fashion-mnist"

#: no BatchNorm, no Dropout: every rank computes what one process computes
PLAIN = """network Plain
input 8x8x1
train { optimizer = sgd, lr = 0.1, momentum = 0.9, nesterov = true, batch = 24, epochs = 2,
        val = 0.2 }
Conv(6, 3) -> ReLU -> MaxPool(2) -> FC(12) -> ReLU -> FC(3) -> Softmax
"""

#: BatchNorm and Dropout, Adam: what resume must carry over exactly
NOISY = """network Noisy
input 8x8x1
train { optimizer = adam, lr = 0.01, weight_decay = 0.001, batch = 16, epochs = 3, val = 0.2 }
Conv(4, 3) -> BatchNorm -> ReLU -> MaxPool(2) -> Dropout(0.2) -> FC(3) -> Softmax
"""

FASHION_NET = """network Small
input 28x28x1
train { optimizer = adam, lr = 0.002, batch = 50, epochs = 1, val = 0.1 }
Conv(8, 3) -> ReLU -> MaxPool(2) -> Conv(8, 3) -> ReLU -> MaxPool(2) -> FC(10) -> Softmax
"""


@pytest.fixture
def npz(tmp_path):
    x, y = synthetic(480, 0)
    xt, yt = synthetic(120, 1)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def cnndsl_cli(tmp_path, *argv, **kwargs):
    """`python -m cnndsl ARGV` in tmp_path (a process of its own: DDP launches workers and
    takes signals; this repository's cnndsl, not an installed one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cnndsl", *map(str, argv)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False,
                          **kwargs)


def metrics(path) -> dict:
    return json.loads(path.with_suffix(".metrics.json").read_text())


def weights(path) -> dict:
    arrays, _ = checkpoint.load(str(path))
    return {k: v for k, v in arrays.items() if k.startswith(("param/", "buffer/", "optim/"))}


def curve(document: dict, keys=("loss", "accuracy", "val_loss", "val_accuracy")) -> list:
    return [[row[key] for key in keys] for row in document["epochs"]]


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="Fashion-MNIST is not installed")
def test_ddp_weights_evaluate_in_numba_as_torch_reported(tmp_path):
    """2 gloo ranks, one short epoch on 3000 Fashion-MNIST images: the .npz gives the
    Numba engine the test accuracy torch reported, and the same predictions."""
    from cnndsl.data import load_dataset
    from cnndsl.datasets import seeded_subset
    from cnndsl.torchengine import module_class
    from cnndsl.train import evaluate

    net = tmp_path / "small.cnn"
    net.write_text(FASHION_NET)
    run = cnndsl_cli(tmp_path, "train", net, "--data", "fashion-mnist", "--limit", 3000,
                     "--engine", "torch", "--nproc", 2, "--no-progress", "-o", "w.npz")
    assert run.returncode == 0, run.stderr
    assert "engine: torch on cpu, 2 processes (gloo)" in run.stdout
    assert run.stdout.count("epoch 1/1") == 1  # rank 0 alone speaks
    reported = metrics(tmp_path / "w.npz")
    assert reported["engine"]["processes"] == 2 and reported["engine"]["backend"] == "gloo"
    assert checkpoint.load(str(tmp_path / "w.npz"))[1]["engine"]["name"] == "torch"

    model = Model(cnndsl.check_text(FASHION_NET), seed=0)
    checkpoint.load_into(model, str(tmp_path / "w.npz"))
    dataset = load_dataset("fashion-mnist")
    x_test, y_test = seeded_subset(dataset.x_test, dataset.y_test, 3000, 0 + 1)
    numba = evaluate(model, x_test, y_test)
    assert abs(numba["accuracy"] - reported["test"]["accuracy"]) <= 0.001
    assert numba["loss"] == pytest.approx(reported["test"]["loss"], rel=1e-4)

    module = module_class(model)()
    from cnndsl.export.pytorch import state_dict

    module.load_state_dict(state_dict(model))
    with torch.no_grad():
        theirs = module.eval().predict_proba(torch.from_numpy(x_test[:200])).numpy()
    ours = model.forward(x_test[:200], train=False)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


def test_one_process_and_two_give_the_same_curve(tmp_path, npz):
    """Same seed, 2 epochs: torch in one process, torch on 2 DDP ranks and the Numba
    engine agree on every epoch's figures and on the final weights, up to float32
    rounding: the ranks' half-batch gradients are summed in another order than one
    process sums the whole batch (about 1e-7 relative per step, over 32 steps)."""
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN)
    common = ["train", net, "--data", npz, "--no-progress"]
    runs = {"one": ["--engine", "torch"], "two": ["--engine", "torch", "--nproc", 2],
            "numba": []}
    for name, flags in runs.items():
        run = cnndsl_cli(tmp_path, *common, *flags, "-o", f"{name}.npz")
        assert run.returncode == 0, run.stderr
    one, two, numba = (metrics(tmp_path / f"{name}.npz") for name in runs)
    np.testing.assert_allclose(curve(two), curve(one), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curve(numba), curve(one), rtol=1e-4, atol=1e-5)
    assert two["test"]["accuracy"] == one["test"]["accuracy"]
    w_one, w_two = weights(tmp_path / "one.npz"), weights(tmp_path / "two.npz")
    assert set(w_one) == set(w_two) == set(weights(tmp_path / "numba.npz"))
    for key in w_one:
        np.testing.assert_allclose(w_two[key], w_one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_resume_continues_exactly(tmp_path, npz):
    """1 epoch, then --resume --epochs 3 (BatchNorm, Dropout, Adam): the same weights,
    BatchNorm statistics, optimizer state and curve, bit for bit, as 3 epochs at once;
    the Numba engine can continue the torch engine's checkpoint too."""
    net = tmp_path / "noisy.cnn"
    net.write_text(NOISY)
    common = ["train", str(net), "--data", str(npz), "--no-progress", "--engine", "torch"]
    assert main([*common, "-o", str(tmp_path / "whole.npz")]) == 0
    assert main([*common, "-o", str(tmp_path / "parts.npz"), "--epochs", "1"]) == 0
    assert main([*common, "-o", str(tmp_path / "parts.npz"), "--epochs", "3",
                 "--resume"]) == 0
    whole, parts = weights(tmp_path / "whole.npz"), weights(tmp_path / "parts.npz")
    assert set(whole) == set(parts) and "optim/m/conv1.weight" in whole
    for key in whole:
        assert np.array_equal(whole[key], parts[key]), key
    assert curve(metrics(tmp_path / "parts.npz")) == curve(metrics(tmp_path / "whole.npz"))
    # the checkpoint is cnndsl's own: the numba engine resumes it
    assert main([*common, "-o", str(tmp_path / "other.npz"), "--epochs", "1"]) == 0
    assert main(["train", str(net), "--data", str(npz), "--no-progress", "--epochs", "2",
                 "-o", str(tmp_path / "other.npz"), "--resume"]) == 0
    assert len(metrics(tmp_path / "other.npz")["epochs"]) == 2


def test_ctrl_c_stops_every_rank_and_rank_0_saves(tmp_path, npz):
    """SIGINT to the whole process group (what Ctrl-C does) in the second (last) epoch
    of a 2-rank run: exit 130, the checkpoint holds the batch all ranks stopped at, and
    --resume finishes that epoch."""
    x, y = synthetic(3000, 0)
    big = tmp_path / "big.npz"
    np.savez(big, x_train=x, y_train=y, x_test=x[:200], y_test=y[:200])
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN.replace("batch = 24", "batch = 4"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "cnndsl", "train", str(net), "--data", str(big),
            "--no-progress", "--engine", "torch", "--nproc", "2", "--epochs", "2",
            "-o", "w.npz"]
    process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "w.curves.png").exists() and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch's files: the run is in its second epoch
    time.sleep(0.3)  # some batches into it
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    progress = checkpoint.load(str(tmp_path / "w.npz"))[1]["progress"]
    assert progress["epoch"] == 1 and progress["step"] > 0
    assert f"interrupted: saved to w.npz (epoch {progress['epoch'] + 1}, batch " \
           f"{progress['step']})" in err
    run = cnndsl_cli(tmp_path, "train", net, "--data", big, "--no-progress", "--engine",
                     "torch", "--nproc", 2, "-o", "w.npz", "--resume")
    assert run.returncode == 0, run.stderr
    assert f"batch {progress['step']} of the next" in run.stdout
    assert len(metrics(tmp_path / "w.npz")["epochs"]) == 2
    assert run.stdout.count("epoch 2/2") == 1


@pytest.mark.parametrize("flag", [["--nproc", "2"], ["--device", "cpu"], ["--nnodes", "2"],
                                  ["--rdzv-endpoint", "h:1"], ["--rdzv-id", "x"]])
def test_torch_flags_with_the_numba_engine_are_usage_errors(tmp_path, npz, capsys, flag):
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(net), "--data", str(npz), *flag])
    assert exit_.value.code == 2
    assert f"{flag[0]} needs --engine torch" in capsys.readouterr().err
    assert not (tmp_path / "plain.npz").exists()


def test_cuda_without_a_gpu_is_refused(tmp_path, npz, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN)
    assert main(["train", str(net), "--data", str(npz), "--engine", "torch",
                 "--device", "cuda", "-o", str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "w.npz").exists()


def test_without_torch_says_how_to_install_it(tmp_path, npz, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN)
    assert main(["train", str(net), "--data", str(npz), "--engine", "torch",
                 "-o", str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnndsl: error: the torch engine needs PyTorch: pip install "
                          "'cnndsl[torch]' (the CPU wheel: torch==2.13.0)")
    assert "Traceback" not in err and not (tmp_path / "w.npz").exists()


def test_nproc_must_be_positive(tmp_path, npz, capsys):
    net = tmp_path / "plain.cnn"
    net.write_text(PLAIN)
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(net), "--data", str(npz), "--engine", "torch", "--nproc", "0"])
    assert exit_.value.code == 2 and "--nproc must be 1 or more" in capsys.readouterr().err
