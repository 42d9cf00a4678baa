"""Issue 14's lecture items: a repetition count of 0 (the group vanishes), the built-in
name `classes` (the data's class count), and top-5 accuracy next to top-1."""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl.errors import CnnDslError


def layer_ops(text: str, bindings: dict | None = None) -> list[str]:
    graph = cnndsl.check_text(text, bindings)
    return [graph.nodes[n]["op"] for n in graph.nodes]


def error_of(text: str, bindings: dict | None = None) -> CnnDslError:
    with pytest.raises(CnnDslError) as caught:
        cnndsl.check_text(text, bindings, filename="net.cnn")
    return caught.value


# ---- repetition count 0 ---------------------------------------------------------------------

LECTURE = ("input 28x28x1\nlet k = 2, m = 2, n = 1\n"
           "[(Conv -> ReLU) * k -> Pool] * m -> (FC -> ReLU) * n -> FC(10) -> Softmax\n")


def test_count_zero_leaves_the_group_out():
    assert layer_ops(LECTURE, {"n": 0}) == (
        ["Input"] + ["Conv", "ReLU", "Conv", "ReLU", "MaxPool"] * 2 + ["FC", "Softmax"])
    assert layer_ops(LECTURE, {"n": 1}).count("FC") == 2


def test_count_zero_is_the_same_network_as_without_the_group():
    without = "input 8x8x1\nConv(4) -> FC(3)\n"
    assert layer_ops("input 8x8x1\nConv(4) -> (Conv(5) -> ReLU) * 0 -> FC(3)\n") == \
        layer_ops(without)
    graph = cnndsl.check_text("input 8x8x1\nConv(4) -> ReLU * 0 -> FC(3)\n")
    assert graph.nodes["fc1"]["inputs"] == ["conv1"]
    assert graph.nodes["fc1"]["shape"] == (3,)


def test_count_zero_in_a_branch_is_the_identity():
    graph = cnndsl.check_text("input 8x8x4\n{ Identity + Conv(4) * 0 }\n")
    assert graph.nodes["add1"]["inputs"] == ["identity1", "input"]
    assert graph.nodes["add1"]["shape"] == (8, 8, 4)


def test_count_zero_still_checks_the_layer_names_inside():
    error = error_of("input 8x8x1\n(Convv(4) -> ReLU) * 0 -> FC(3)\n")
    assert "unknown layer 'Convv'" in error.message and "Conv" in error.hint


def test_count_zero_keeps_checking_what_follows():
    """`(FC -> ReLU) * 0` after a spatial output still needs a flat classifier to check."""
    error = error_of("input 4x4x1\nConv(2) -> (FC(3) -> ReLU) * 0 -> Conv(1, 5x5, pad=valid)\n")
    assert "Conv" in error.message


def test_a_negative_count_is_still_an_error():
    error = error_of("input 8x8x1\nlet n = -1\nConv(4) * n -> FC(3)\n")
    assert error.message == "repetition count -1 is negative"
    assert (error.span.line, error.span.col) == (3, 11)  # at `n`


@pytest.mark.parametrize("body", ["Conv(4) * 0", "[(Conv(4) -> ReLU) * 0 -> Pool] * 0",
                                  "(Conv(4) -> ReLU) * n"])
def test_a_network_that_vanishes_entirely_is_an_error(body):
    error = error_of(f"input 8x8x1\nlet n = 0\n{body}\n")
    assert error.message.startswith("the network has no layers")
    assert "repetition count of 0" in error.hint
    assert (error.span.line, error.span.col) == (3, 1)
    assert str(error).startswith("net.cnn:3:1: error: the network has no layers")


def test_count_zero_from_the_command_line(tmp_path, capsys):
    from cnndsl.cli import main

    path = tmp_path / "net.cnn"
    path.write_text(LECTURE, encoding="utf-8")
    assert main(["check", str(path), "--set", "n=0", "--json"]) == 0
    import json

    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [layer["op"] for layer in layers].count("FC") == 1


# ---- the built-in name `classes` ------------------------------------------------------------

HEAD = "input 8x8x1\n"
USES_CLASSES = HEAD + "Conv(4) -> ReLU -> MaxPool(2) -> FC(classes) -> Softmax\n"
CLASSES_COL = USES_CLASSES.splitlines()[1].index("classes") + 1  # 37


def test_an_unbound_classes_is_a_located_error_with_the_hint():
    from cnndsl.evaluate import UnboundClasses

    error = error_of(USES_CLASSES)
    assert isinstance(error, UnboundClasses)
    assert error.message == "unbound name 'classes' (the number of classes)"
    assert (error.span.line, error.span.col) == (2, CLASSES_COL)
    assert error.hint == ("classes is the number of classes: bound from the data by "
                          "train/eval, or write --set classes=10 / let classes = 10 "
                          "(Python: compile(text, classes=10))")


@pytest.mark.parametrize("text, bindings, data, units", [
    (USES_CLASSES, {"classes": 7}, None, 7),                        # --set / the API
    ("let classes = 4\n" + USES_CLASSES, None, None, 4),            # a let in the file
    (USES_CLASSES, None, {"classes": 3}, 3),                        # the data
    ("let classes = 4\n" + USES_CLASSES, None, {"classes": 3}, 4),  # a let wins over data
    ("let classes = 4\n" + USES_CLASSES, {"classes": 6}, {"classes": 3}, 6),  # --set wins
])
def test_what_binds_classes(text, bindings, data, units):
    graph = cnndsl.check_text(text, bindings, data=data)
    assert graph.nodes["fc1"]["shape"] == (units,)
    bound_by_data = data is not None and units == data["classes"]
    assert graph.graph["data_bindings"] == ({"classes": units} if bound_by_data else {})


def test_classes_in_expressions_lets_macros_and_train_blocks():
    text = ("input 8x8x1\nlet hidden = 2 * classes\ndef head(k) = FC(k) -> Softmax\n"
            "train { batch = classes }\n"
            "Conv(4) -> FC(hidden) -> ReLU -> head(classes)\n")
    graph = cnndsl.check_text(text, data={"classes": 5})
    assert graph.nodes["fc1"]["shape"] == (10,) and graph.nodes["fc2"]["shape"] == (5,)
    assert graph.graph["train_settings"]["batch"] == 5
    assert isinstance(error_of(text), CnnDslError)


def test_check_requires_classes_bound_and_says_how(tmp_path, capsys):
    from cnndsl.cli import main

    path = tmp_path / "net.cnn"
    path.write_text(USES_CLASSES, encoding="utf-8")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:2:{CLASSES_COL}: error: unbound name 'classes'")
    assert "hint: classes is the number of classes" in err
    assert main(["check", str(path), "--set", "classes=10", "--json"]) == 0
    assert '"output": [10]' in capsys.readouterr().out.replace("[\n", "[")


# ---- train and eval bind `classes` from the data ---------------------------------------------

def synthetic(n: int, classes: int, seed: int):
    """8x8 images of `classes` classes: class c has a bright row c (plus noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    x[np.arange(n), y, :, 0] += 0.7
    return x, y


@pytest.fixture
def seven_classes(tmp_path):
    import numpy as np

    x, y = synthetic(140, 7, 0)
    xt, yt = synthetic(70, 7, 1)
    path = tmp_path / "seven.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def test_train_and_eval_bind_classes_from_the_data(tmp_path, seven_classes, capsys):
    import json

    import numpy as np

    from cnndsl import checkpoint
    from cnndsl.cli import main

    net = tmp_path / "net.cnn"
    net.write_text(USES_CLASSES + "train { epochs = 2, batch = 16, lr = 0.01 }\n",
                   encoding="utf-8")
    out = tmp_path / "w.npz"
    assert main(["train", str(net), "--data", str(seven_classes), "-o", str(out),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "note: classes = 7, the class count of seven.npz" in captured.err
    test_line = [line for line in captured.out.splitlines() if line.startswith("test accuracy")]
    assert len(test_line) == 1 and ", top-5 " in test_line[0]
    arrays, meta = checkpoint.load(str(out))
    assert arrays["param/fc1.weight"].shape == (7, 64)
    assert meta["bindings"] == {"classes": 7}
    metrics = json.loads((tmp_path / "w.metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "accuracy", "top5"}
    assert metrics["test"]["accuracy"] <= metrics["test"]["top5"] <= 1.0

    # eval with the file: `classes` from the test data; without it: from the weights file
    for argv in (["eval", str(net)], ["eval"]):
        assert main([*argv, "--weights", str(out), "--data", str(seven_classes)]) == 0
        report = capsys.readouterr().out.splitlines()
        assert report[0].startswith("accuracy ")
        assert report[1].startswith("top-5    ")
        assert float(report[1].split()[1]) == pytest.approx(metrics["test"]["top5"], abs=1e-4)
    assert np.isfinite(metrics["test"]["loss"])


def trained_one_epoch(folder, data):
    """(net.cnn using an unbound `classes`, w.npz): `cnndsl train` of one epoch on `data`."""
    from cnndsl.cli import main

    net = folder / "net.cnn"
    net.write_text(USES_CLASSES + "train { epochs = 1, batch = 32 }\n", encoding="utf-8")
    out = folder / "w.npz"
    assert main(["train", str(net), "--data", str(data), "-o", str(out),
                 "--no-progress"]) == 0
    return net, out


def test_resume_binds_classes_from_the_saved_runs_data(tmp_path, seven_classes, capsys):
    from cnndsl import checkpoint
    from cnndsl.cli import main

    net, out = trained_one_epoch(tmp_path, seven_classes)
    capsys.readouterr()
    # no --data: the resumed run's (seven.npz), not the default Fashion-MNIST's 10 classes
    assert main(["train", str(net), "-o", str(out), "--resume", "--epochs", "2",
                 "--no-progress"]) == 0
    assert "classes = 7" in capsys.readouterr().err
    arrays, meta = checkpoint.load(str(out))
    assert meta["progress"]["epoch"] == 2 and arrays["param/fc1.weight"].shape == (7, 64)


def test_a_data_bound_network_refuses_other_data_at_eval(tmp_path, seven_classes, capsys):
    import numpy as np

    from cnndsl.cli import main

    net, out = trained_one_epoch(tmp_path, seven_classes)
    x, y = synthetic(40, 3, 2)
    three = tmp_path / "three.npz"
    np.savez(three, x_train=x, y_train=y, x_test=x, y_test=y)
    capsys.readouterr()
    # bound to 3 by these data, the network does not fit weights of a 7-class network
    assert main(["eval", str(net), "--weights", str(out), "--data", str(three)]) == 1
    err = capsys.readouterr().err
    assert "another network" in err and "Traceback" not in err


def test_predict_binds_classes_from_the_weights(tmp_path, seven_classes, capsys):
    from PIL import Image

    from cnndsl.cli import main

    net, out = trained_one_epoch(tmp_path, seven_classes)
    image = tmp_path / "row.png"
    Image.new("L", (8, 8), 0).save(image)
    capsys.readouterr()
    assert main(["predict", str(net), "--weights", str(out), str(image), "--top", "9"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(", ") == 6  # the 7 trained classes


# ---- top-5 accuracy -----------------------------------------------------------------------

def test_top_k_hits_ranks_ties_as_argmax_does():
    import numpy as np

    from cnndsl.train import top_k_hits

    probs = np.array([[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]])
    assert top_k_hits(probs, np.array([1, 0]), 1) == 2    # argmax: 1, and 0 among ties
    assert top_k_hits(probs, np.array([0, 3]), 1) == 0
    assert top_k_hits(probs, np.array([2, 1]), 2) == 2    # 2 ties with 3, ranked before it
    assert top_k_hits(probs, np.array([3, 3]), 2) == 0    # 3 ranks third in both rows
    assert top_k_hits(probs, np.array([3, 3]), 3) == 1    # ...and fourth in the uniform row
    assert top_k_hits(probs, np.array([3, 3]), 4) == 2


class _Fixed:
    """A stand-in model whose probabilities are given: evaluate needs only these."""

    output_shape = (8,)
    logits_name = output_name = "out"

    def __init__(self, probs):
        self.probs = probs

    def forward(self, x, train=False):
        return self.probs[x[:, 0].astype(int)]


def test_evaluate_reports_top5_with_more_than_five_classes():
    import numpy as np

    from cnndsl.train import evaluate

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 8))
    labels = rng.integers(0, 8, size=40)
    x = np.arange(40, dtype=np.float64)[:, None]
    result = evaluate(_Fixed(logits), x, labels, batch=7)
    order = np.argsort(-logits, axis=1, kind="stable")
    expected = np.mean([labels[i] in order[i, :5] for i in range(40)])
    assert result["top5"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(np.mean(order[:, 0] == labels))
    assert result["accuracy"] <= result["top5"] < 1.0
    assert list(result) == ["loss", "accuracy", "top5", "per_class", "confusion"]
    assert "top5" not in evaluate(_Fixed(logits), x, labels, classes=5)


def test_the_report_shows_top5_under_the_accuracy():
    import numpy as np

    from cnndsl.report import format_evaluation

    matrix = np.eye(6, dtype=np.int64) * 3
    lines = format_evaluation(matrix, [str(i) for i in range(6)], top5=0.98765).splitlines()
    assert lines[0].startswith("accuracy 1.0000 (18 of 18")
    assert lines[1] == "top-5    0.9877 (the true class among the 5 most probable)"
    assert "top-5" not in format_evaluation(matrix, [str(i) for i in range(6)])


def test_model_evaluate_has_top5():
    model = cnndsl.compile(USES_CLASSES, classes=7)
    x, y = synthetic(30, 7, 3)
    result = model.evaluate(x, y)
    assert result["accuracy"] <= result["top5"] <= 1
    assert "top5" not in cnndsl.compile(USES_CLASSES, classes=5).evaluate(x, y % 5)


# ---- the lecture example ------------------------------------------------------------------

def test_the_lecture_example_with_n_0_has_no_hidden_fc():
    from conftest import EXAMPLES

    graph = cnndsl.check_file(str(EXAMPLES / "lecture.cnn"), n=0)
    fcs = [n for n in graph.nodes if graph.nodes[n]["op"] == "FC"]
    assert fcs == ["fc1"] and graph.nodes["fc1"]["inputs"] == ["maxpool2"]
    assert graph.nodes["fc1"]["shape"] == (10,)
    with_hidden = cnndsl.check_file(str(EXAMPLES / "lecture.cnn"))
    assert [with_hidden.nodes[n]["shape"] for n in ("fc1", "fc2")] == [(128,), (10,)]


def test_the_lecture_example_takes_classes_from_the_command_line():
    from conftest import EXAMPLES

    graph = cnndsl.check_file(str(EXAMPLES / "lecture.cnn"), classes=5)
    assert graph.nodes[graph.graph["output"]]["shape"] == (5,)
