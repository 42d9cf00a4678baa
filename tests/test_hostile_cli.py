"""Hostile inputs at the command line (issue "Hostile inputs"): networks too large for the
machine, outputs that cannot be written, ONNX files over protobuf's 2 GiB: a clear error,
exit 1 (2 for a bad flag), never exit 3, nothing written, in bounded memory."""

import subprocess
import sys

import numpy as np
import pytest
from measure import run_measured

import cnndsl
from cnndsl import memory


def cnndsl_cli(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "cnndsl.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def small_dataset(path, shape=(8, 8, 1), n=32):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((n, *shape), dtype=np.float32),
             y_train=rng.integers(0, 3, n), x_test=rng.random((8, *shape), dtype=np.float32),
             y_test=rng.integers(0, 3, 8))


@pytest.mark.parametrize("layer", ["FC(1000000000)", "Conv(8, 3) -> FC(10^9)"])
def test_weights_that_cannot_fit_are_refused_with_their_size(tmp_path, layer):
    (tmp_path / "big.cnn").write_text(f"input 8x8x1\nConv(4, 3) -> {layer}\n")
    small_dataset(tmp_path / "d.npz")
    status, _, err, peak_mb, _ = run_measured(
        [sys.executable, "-m", "cnndsl.cli", "train", "big.cnn", "--data", "d.npz"], tmp_path)
    assert "Traceback" not in err and "internal error" not in err, err
    assert status == 1
    assert "big.cnn:2:" in err and "for its weights, but this machine has" in err
    assert "alone needs" in err and " ^" in err
    assert peak_mb < 1000           # well under 1 GB
    assert not (tmp_path / "big.npz").exists()


def test_python_gets_the_same_located_error():
    with pytest.raises(memory.ResourceError) as error:
        cnndsl.compile("input 8x8x1\nFC(1000000000)")
    report = str(error.value)
    assert report.startswith("<string>:2:1: error: running this network needs 260.0 GB")
    assert "FC 'fc1' alone needs" in report


def test_activations_that_cannot_fit_at_this_batch(monkeypatch):
    graph = cnndsl.check_text("input 64x64x3\nConv(64, 3) -> Conv(64, 3) -> FC(10)")
    monkeypatch.setattr(memory, "available_bytes", lambda: 500_000_000)
    memory.check_fits(graph, 4, batch=4, train=True)          # 4 images fit
    with pytest.raises(memory.ResourceError) as error:
        memory.check_fits(graph, 4, batch=512, train=True)
    message = error.value.message
    assert "for activations at batch 512" in message and "Conv 'conv1' alone" in message
    assert "--batch" in error.value.hint


def test_output_naming_a_folder_is_a_usage_error(tmp_path):
    (tmp_path / "net.cnn").write_text("input 8x8x1\nConv(4, 3) -> FC(3)\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out.svg").mkdir()
    for command in (["export", "net.cnn", "--to", "onnx", "-o", "out"],
                    ["render", "net.cnn", "-o", "out.svg"],
                    ["render", "net.cnn", "-o", "missing/net.svg"]):
        status, _, err = cnndsl_cli(*command, cwd=tmp_path)
        assert status == 2 and "cnndsl: error: -o" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_picture_that_cannot_be_written_is_a_clear_error(tmp_path):
    (tmp_path / "net.cnn").write_text("input 8x8x1\nConv(4, 3) -> FC(3)\n")
    small_dataset(tmp_path / "d.npz")
    assert cnndsl_cli("train", "net.cnn", "--data", "d.npz", "--epochs", "1", "--no-progress",
                      cwd=tmp_path)[0] == 0
    (tmp_path / "net.confusion.png").mkdir()         # eval's picture cannot be written
    status, _, err = cnndsl_cli("eval", "--weights", "net.npz", cwd=tmp_path)
    assert status == 1
    assert "net.confusion.png" in err and "Is a directory" in err and "hint:" in err


def test_onnx_weights_over_the_limit_go_to_external_data(tmp_path, monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    from cnndsl.export import onnx as export

    model = cnndsl.compile("input 8x8x1\nConv(4, 3) -> ReLU -> FC(3) -> Softmax")
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 100)   # as if they were over 2 GiB
    export.to_onnx(model, tmp_path / "net.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.onnx.data"]
    assert (tmp_path / "net.onnx.data").stat().st_size > (tmp_path / "net.onnx").stat().st_size
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"))
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.forward(x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--limit", "-59990"], "--limit must be 0 (all) or a number of images"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--allow-changes"], "--allow-changes only applies with --resume"),
])
def test_bad_training_flags_are_refused_before_training(tmp_path, flags, message):
    (tmp_path / "net.cnn").write_text("input 8x8x1\nConv(4, 3) -> FC(3)\n")
    small_dataset(tmp_path / "d.npz")
    status, out, err = cnndsl_cli("train", "net.cnn", "--data", "d.npz", *flags, cwd=tmp_path)
    assert status == 2 and message in err and "epoch" not in out
    assert not (tmp_path / "net.npz").exists()


def test_render_on_a_full_disk_leaves_no_debris(tmp_path, monkeypatch):
    """render writes through the same atomic writer as weights: a failure leaves the old
    picture as it was and no temporary file."""
    import errno
    import os

    from cnndsl.render import render_to_file

    (tmp_path / "net.cnn").write_text("input 8x8x1\nConv(4, 3) -> FC(3)\n")
    old = tmp_path / "net.dot"
    old.write_bytes(b"the previous diagram")

    def full(fd, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(cnndsl.CnnDslError) as error:
        render_to_file(str(tmp_path / "net.cnn"), {}, str(old), "dot")
    assert "the disk is full" in str(error.value)
    assert old.read_bytes() == b"the previous diagram"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.cnn", "net.dot"]
