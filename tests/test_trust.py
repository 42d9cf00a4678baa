"""Never a silently wrong result (issue "Trust"): every case runs the real `cnndsl` command in
a subprocess, as a user does, on small offline data."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cnndsl

NET = """network Small
input 8x8x1
let width = 4
train { optimizer = adam, lr = 0.01, batch = 16, epochs = 1 }
Conv(width, 3) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax
"""


def cnndsl_cli(*args, cwd):
    """Run the installed command line; (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "cnndsl.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def dataset(path, shape=(8, 8, 1), n=120, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.random((n, *shape), dtype=np.float32),
             y_train=rng.integers(0, 3, n), x_test=rng.random((n_test, *shape), dtype=np.float32),
             y_test=rng.integers(0, 3, n_test))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with small.cnn, data.npz and w.npz trained from them for one epoch."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "small.cnn").write_text(NET)
    dataset(folder / "data.npz")
    status, _out, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "-o", "w.npz",
                                  "--no-progress", cwd=folder)
    assert status == 0, err
    Image.fromarray((np.random.default_rng(1).random((8, 8)) * 255).astype(np.uint8)).save(
        folder / "image.png")
    return folder


# ---- weights of another network ---------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["predict", "--weights", "w.npz", "image.png"],
    ["eval", "--weights", "w.npz"],
    ["export", "--weights", "w.npz", "--to", "onnx", "-o", "out.onnx"],
])
def test_weights_of_a_network_with_another_activation_are_refused(trained, command):
    (trained / "tanh.cnn").write_text(NET.replace("ReLU", "Tanh"))
    status, out, err = cnndsl_cli(command[0], "tanh.cnn", *command[1:], cwd=trained)
    assert status == 1 and out == ""
    assert "relu1 is ReLU in w.npz but Tanh here" in err
    assert "--force" in err
    assert not (trained / "out.onnx").exists()   # nothing written


def test_force_loads_with_a_warning(trained):
    (trained / "tanh.cnn").write_text(NET.replace("ReLU", "Tanh"))
    status, out, err = cnndsl_cli("predict", "tanh.cnn", "--weights", "w.npz", "image.png",
                                  "--force", cwd=trained)
    assert status == 0 and "image.png:" in out
    assert "warning:" in err and "relu1 is ReLU in w.npz but Tanh here" in err


@pytest.mark.parametrize("edit, difference", [
    (lambda t: t.replace("Conv(width, 3)", "Conv(width, 5)"),
     "conv1 (Conv) resolves to kernel 1x3x3 in w.npz but 1x5x5 here"),
    (lambda t: t.replace("MaxPool(2)", "AvgPool(2)"), "maxpool1 is MaxPool in w.npz but AvgPool"),
    (lambda t: t.replace("-> ReLU ->", "-> ReLU -> Dropout(0.5) ->"),
     "maxpool1 is MaxPool in w.npz but Dropout here"),
    (lambda t: t.replace("Conv(width, 3)", "Conv(width, 3, stride=2, pad=valid)"),
     "conv1 (Conv) resolves to stride 1x1x1 in w.npz but 1x2x2 here"),
    (lambda t: t.replace("Conv(width, 3)", "c: Conv(width, 3)"),
     "layer 2 (Conv) is named conv1 in w.npz but c here"),
])
def test_every_kind_of_graph_change_is_named(trained, edit, difference):
    (trained / "edited.cnn").write_text(edit(NET))
    status, _, err = cnndsl_cli("predict", "edited.cnn", "--weights", "w.npz", "image.png",
                                cwd=trained)
    assert status == 1 and difference in err, err


@pytest.mark.parametrize("edit", [
    lambda t: "# a comment added\n" + t.replace("Softmax", "Softmax  # and here"),
    lambda t: t.replace("width", "channels"),                  # a renamed let
    lambda t: t.replace("let width = 4", "let width = 2 + 2"),  # the same value
    lambda t: t.replace("MaxPool(2)", "MaxPool(2, 2)"),         # the default written out
    lambda t: t.replace("Conv(width, 3)", "Conv(width, 3, pad=1)"),   # = same, resolved
    lambda t: t.replace(" -> ", " → "),
])
def test_the_same_graph_written_differently_still_loads(trained, edit):
    (trained / "same.cnn").write_text(edit(NET))
    status, out, err = cnndsl_cli("predict", "same.cnn", "--weights", "w.npz", "image.png",
                                  cwd=trained)
    assert status == 0, err
    assert "image.png:" in out


def test_bindings_that_change_the_graph_are_refused(trained):
    status, _, err = cnndsl_cli("eval", "small.cnn", "--weights", "w.npz", "--set", "width=6",
                                cwd=trained)
    assert status == 1 and "conv1 (Conv) has filters=4 in w.npz but filters=6 here" in err


def test_eval_takes_the_network_from_the_weights_file(trained):
    status, out, err = cnndsl_cli("eval", "--weights", "w.npz", cwd=trained)
    assert status == 0, err
    assert out.startswith("accuracy ") and "of 40 test images" in out


def test_resume_with_another_network_is_refused(trained, tmp_path):
    (tmp_path / "small.cnn").write_text(NET)
    (tmp_path / "tanh.cnn").write_text(NET.replace("ReLU", "Tanh"))
    dataset(tmp_path / "data.npz")
    assert cnndsl_cli("train", "small.cnn", "--data", "data.npz", "-o", "w.npz",
                      "--no-progress", cwd=tmp_path)[0] == 0
    status, _out, err = cnndsl_cli("train", "tanh.cnn", "-o", "w.npz", "--resume", "--epochs",
                                  "2", "--no-progress", cwd=tmp_path)
    assert status == 1 and "relu1 is ReLU in w.npz but Tanh here" in err


# ---- resume continues the saved run ----------------------------------------------------------

@pytest.fixture
def run(tmp_path):
    """One epoch trained with --limit 80 and --lr 0.02 on data.npz, saved to w.npz."""
    (tmp_path / "small.cnn").write_text(NET)
    dataset(tmp_path / "data.npz")
    status, _out, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "--limit", "80",
                                  "--lr", "0.02", "-o", "w.npz", "--no-progress", cwd=tmp_path)
    assert status == 0, err
    return tmp_path


def metrics(folder):
    return json.loads((folder / "w.metrics.json").read_text())


def test_resume_refuses_a_changed_setting(run):
    before = (run / "w.npz").read_bytes()
    status, _out, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs",
                                  "2", "--lr", "0.5", "--batch", "8", "--no-progress", cwd=run)
    assert status == 1
    assert "--lr 0.5 (saved: 0.02)" in err and "--batch 8 (saved: 16)" in err
    assert "--allow-changes" in err
    assert (run / "w.npz").read_bytes() == before   # nothing trained, nothing written


def test_resume_refuses_other_data(run):
    dataset(run / "other.npz", seed=5)
    status, _, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs", "2",
                                "--data", "other.npz", "--no-progress", cwd=run)
    assert status == 1 and "--data other.npz (saved: data.npz)" in err
    status, _, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs", "2",
                                "--limit", "60", "--no-progress", cwd=run)
    assert status == 1 and "--limit 60 (saved: 80)" in err
    dataset(run / "data.npz", seed=9)                # the same name, other contents
    status, _, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs", "2",
                                "--no-progress", cwd=run)
    assert status == 1 and "the data changed since the run began" in err


def test_resume_keeps_the_saved_settings_and_data_and_extends_with_epochs(run):
    status, out, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs",
                                  "2", "--no-progress", cwd=run)
    assert status == 0, err
    # neither --limit 80 nor --lr 0.02 was repeated: the saved run's are used
    assert "(--limit 80: 80 training, 40 test images)" in out and "lr 0.02" in out
    assert "epoch 2/2" in out
    rows = metrics(run)["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] == 0.02
    assert metrics(run)["changes"] == [{"epoch": 1, "step": 0, "setting": "epochs",
                                        "from": 1, "to": 2}]


def test_allow_changes_continues_and_records_them(run):
    status, _out, err = cnndsl_cli("train", "small.cnn", "-o", "w.npz", "--resume", "--epochs",
                                  "2", "--lr", "0.005", "--allow-changes", "--no-progress",
                                  cwd=run)
    assert status == 0, err
    assert "lr changed from 0.02 to 0.005" in err
    document = metrics(run)
    assert {"epoch": 1, "step": 0, "setting": "lr", "from": 0.02, "to": 0.005} in \
        document["changes"]
    assert document["epochs"][1]["lr"] == 0.005


# ---- 1-D and 3-D data, --val 0, --limit -------------------------------------------------------

@pytest.mark.parametrize("net, shape", [
    ("input 64x1\nConv(4, 5) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax", (64,)),
    ("input 64x1\nConv(4, 5) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax", (64, 1)),
    ("input 64x2\nConv(4, 5) -> ReLU -> FC(3)", (64, 2)),
    ("input 6x6x6x1\nConv(2, 3) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax", (6, 6, 6)),
    ("input 6x6x6x1\nConv(2, 3) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax", (6, 6, 6, 1)),
])
def test_1d_and_3d_networks_train_from_npz(tmp_path, net, shape):
    (tmp_path / "net.cnn").write_text(net + "\n")
    dataset(tmp_path / "d.npz", shape=shape, n=48, n_test=16)
    status, out, err = cnndsl_cli("train", "net.cnn", "--data", "d.npz", "--epochs", "1",
                                  "--no-progress", cwd=tmp_path)
    assert status == 0, err
    assert "epoch 1/1" in out and "test accuracy" in out
    status, out, err = cnndsl_cli("eval", "--weights", "net.npz", cwd=tmp_path)
    assert status == 0, err


def test_data_of_another_shape_gets_a_hint_that_works(tmp_path):
    (tmp_path / "net.cnn").write_text("input 64x1\nConv(4, 5) -> FC(3)\n")
    dataset(tmp_path / "d.npz", shape=(32,), n=48, n_test=16)
    status, _, err = cnndsl_cli("train", "net.cnn", "--data", "d.npz", "--no-progress",
                                cwd=tmp_path)
    assert status == 1
    assert "d.npz examples are 32 but the network's input is 64x1" in err
    assert "change `input` to 32x1" in err


def test_val_0_prints_no_validation_figures(tmp_path):
    (tmp_path / "small.cnn").write_text(NET)
    dataset(tmp_path / "data.npz")
    status, out, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "--val", "0",
                                  "--no-progress", cwd=tmp_path)
    assert status == 0, err
    assert "val_" not in out and "nan" not in out.lower()
    assert "no validation split" in out
    csv_header = (tmp_path / "small.metrics.csv").read_text().splitlines()[0]
    assert "val" not in csv_header


def test_limit_also_limits_the_test_pass(tmp_path):
    (tmp_path / "small.cnn").write_text(NET)
    dataset(tmp_path / "data.npz", n=120, n_test=100)
    status, out, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "--limit", "30",
                                  "--no-progress", cwd=tmp_path)
    assert status == 0, err
    assert "test accuracy" in out and "on 30 images" in out


# ---- errors in Python are the CLI's errors ---------------------------------------------------

@pytest.mark.parametrize("text", [
    "input 28x28x1\nConv(32) -> Relu",
    "input 8x8x1\nConv(4, 9, pad=valid) -> FC(2)",
    "input 8x8x1\nlet k = 0\nConv(4) * k",
    "input 8x8x1\nConv(4,, 3)",
])
def test_python_errors_read_like_the_cli(tmp_path, text):
    (tmp_path / "bad.cnn").write_text(text)
    status, _, cli_error = cnndsl_cli("check", "bad.cnn", cwd=tmp_path)
    assert status == 1
    with pytest.raises(cnndsl.CnnDslError) as from_text:
        cnndsl.compile(text)
    assert str(from_text.value) == cli_error.strip().replace("bad.cnn:", "<string>:")
    assert "^" in str(from_text.value)
    with pytest.raises(cnndsl.CnnDslError) as from_file:
        cnndsl.load(str(tmp_path / "bad.cnn"))
    assert str(from_file.value) == cli_error.strip().replace("bad.cnn:", f"{tmp_path}/bad.cnn:")
    with pytest.raises(cnndsl.CnnDslError) as checked:
        cnndsl.check_text(text)
    assert str(checked.value) == str(from_text.value)


def test_unknown_layer_from_python_says_did_you_mean():
    with pytest.raises(cnndsl.CnnDslError) as error:
        cnndsl.compile("input 28x28x1\nConv(32) -> Relu")
    assert str(error.value).splitlines() == [
        "<string>:2:13: error: unknown layer 'Relu'",
        " 2 | Conv(32) -> Relu",
        "   |             ^^^^",
        "hint: did you mean 'ReLU'?",
    ]


# ---- the command line itself ------------------------------------------------------------------

def test_version(tmp_path):
    status, out, _ = cnndsl_cli("--version", cwd=tmp_path)
    assert status == 0 and out.strip() == f"cnndsl {cnndsl.__version__}"


def test_every_option_has_help_that_shows_its_default():
    from cnndsl.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subcommands.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            flag_only = action.nargs == 0   # on/off flags are off by default
            assert flag_only or action.required or "default" in \
                sub._get_formatter()._get_help_string(action), \
                f"{name} {action.option_strings[0]} does not show its default"
        assert "default" in text


def test_misspelt_optimizer_gets_did_you_mean(tmp_path):
    (tmp_path / "small.cnn").write_text(NET)
    status, _, err = cnndsl_cli("train", "small.cnn", "--optimizer", "adma", cwd=tmp_path)
    assert status == 2 and "did you mean 'adam'" in err
    (tmp_path / "block.cnn").write_text(NET.replace("optimizer = adam", "optimizer = sgdd"))
    status, _, err = cnndsl_cli("train", "block.cnn", cwd=tmp_path)
    assert status == 1 and "block.cnn:4:" in err and "did you mean 'sgd'" in err


# ---- the first run says what it waits for -------------------------------------------------------

def test_first_run_says_it_compiles_and_the_second_does_not(tmp_path, monkeypatch):
    (tmp_path / "small.cnn").write_text(NET)
    dataset(tmp_path / "data.npz", n=48, n_test=16)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty-cache"))   # a new machine
    status, _, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "--no-progress",
                                  cwd=tmp_path)
    assert status == 0, err
    assert "kernels for this machine (first run only" in err
    assert err.index("compiling") < err.index("compiled")
    status, _, err = cnndsl_cli("train", "small.cnn", "--data", "data.npz", "--no-progress",
                                  "--overwrite", cwd=tmp_path)
    assert status == 0 and "compiling" not in err, err
    status, _out, err = cnndsl_cli("eval", "--weights", "small.npz", cwd=tmp_path)
    assert status == 0 and "compiling" not in err, err
