"""`cnndsl check` as a user runs it."""

import json
import subprocess
import sys

from conftest import EXAMPLES, ROOT

from cnndsl.cli import main


def test_table_lists_every_layer_with_totals(capsys):
    assert main(["check", str(EXAMPLES / "mnist_pytorch.cnn")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("network MnistNet: input 28x28x1 -> output 10")
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split() == ["layer", "op", "output", "shape", "RF", "params", "MACs"]
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    assert conv1.split() == ["conv1", "Conv(10,", "5x5,", "pad=valid)", "24x24x10", "5x5",
                             "260", "149,760"]  # 260 x 24*24
    assert "total params: 21,840" in out


def test_bare_layers_show_their_defaults(capsys):
    assert main(["check", str(EXAMPLES / "lecture.cnn")]) == 0
    out = capsys.readouterr().out
    assert ("note: bare Conv (first: conv1) means Conv(filters=32, kernel=3, stride=1, "
            "pad=same, dilation=1, groups=1, bias=true, flip=false)") in out
    assert "note: bare FC (first: fc1) means FC(units=128, bias=true)" in out


def test_json_alone_on_stdout_and_warnings_on_stderr(capsys):
    assert main(["check", "--json", "--set", "unused=3", str(EXAMPLES / "lecture.cnn")]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["name"] == "Lecture" and data["input"] == [28, 28, 1]
    assert "--set unused=3 is not used" in captured.err


def test_set_overrides_let(capsys):
    main(["check", "--json", str(EXAMPLES / "lecture.cnn")])
    before = json.loads(capsys.readouterr().out)
    main(["check", "--json", "--set", "k=3", "--set", "m=1", str(EXAMPLES / "lecture.cnn")])
    after = json.loads(capsys.readouterr().out)
    count = lambda data, op: sum(layer["op"] == op for layer in data["layers"])
    assert count(before, "Conv") == 4 and count(after, "Conv") == 3
    assert count(after, "MaxPool") == 1


def test_dump_ir_shows_nodes(capsys):
    assert main(["check", "--dump-ir", str(EXAMPLES / "resnet18.cnn")]) == 0
    out = capsys.readouterr().out
    assert "add1: Add" in out and "inputs=['identity1', 'batchnorm3']" in out


def test_command_line_entry_point_and_no_numba():
    code = ("import sys; from cnndsl.cli import main; rc = main(['check', "
            f"{str(EXAMPLES / 'resnet18.cnn')!r}]); "
            "print('numba' in sys.modules, rc, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    assert result.stderr.strip() == "False 0"
    module = subprocess.run([sys.executable, "-m", "cnndsl", "check", "--json",
                             str(EXAMPLES / "lenet5.cnn")], capture_output=True, text=True,
                            check=False)
    assert module.returncode == 0 and json.loads(module.stdout)["params"] == 61_706


def test_installed_package_ships_the_grammar():
    """A non-editable install must carry grammar/cnn.lark inside the package."""
    import importlib.metadata

    import pytest

    try:
        files = importlib.metadata.files("cnndsl") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("cnndsl is not installed")
    names = [str(f) for f in files]
    if not any(name.startswith("cnndsl/") and name.endswith(".py") for name in names):
        pytest.skip("editable install: the grammar is read from the checkout")
    assert "cnndsl/grammar/cnn.lark" in names


def test_export_command_writes_onnx_and_pytorch(tmp_path, capsys):
    import numpy as np
    import pytest

    ort = pytest.importorskip("onnxruntime")
    import cnndsl

    net = EXAMPLES / "mnist_pytorch.cnn"
    out = tmp_path / "net.onnx"
    assert main(["export", str(net), "--to", "onnx", "-o", str(out), "--seed", "3"]) == 0
    model = cnndsl.load(str(net), seed=3)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    y = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    assert np.allclose(y, model.forward(x), rtol=1e-4, atol=1e-6)
    pytest.importorskip("torch")
    assert main(["export", str(net), "--to", "pytorch", "-o", str(tmp_path / "net.py")]) == 0
    assert (tmp_path / "net.py").read_text().startswith('"""MnistNet, exported by cnndsl')
    assert (tmp_path / "net.pt").exists()
    assert main(["export", str(net), "--to", "onnx", "--weights", str(tmp_path / "no.npz"),
                 "-o", str(tmp_path / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
