"""`cnndsl profile` and cnndsl.profile: rows, fused layers, totals and JSON (issue 12).

Times are wall clock and never compared with a bound; what is checked is structure and
arithmetic (one row per layer, shares adding up, keys and types), and that the per-layer
clock changes nothing a step computes.
"""

import json
import math

import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.cli import main
from cnndsl.profile import LayerClock, profile

FUSED = "network Tiny\ninput 12x12x2\nConv(4, 3) -> ReLU -> MaxPool(2) -> FC(8) -> ReLU -> " \
        "FC(3) -> Softmax\n"
BRANCHES = ("network Branches\ninput 10x10x3\nConv(4, 3) -> ReLU -> "
            "{ Conv(4, 1) -> ReLU | Conv(2, 3) -> BatchNorm } -> "
            "{ Conv(6, 3) | Conv(6, 1) } -> GlobalAvgPool -> FC(5)\n")
ONE_D = ("network Wave\ninput 64x2\nConv(4, 5, stride=2) -> BatchNorm -> ReLU -> MaxPool(2) "
         "-> Dropout(0.5) -> Flatten -> FC(3) -> Softmax\n")
#: above cnndsl.parallel.SMALL_NET_MACS: training cuts its batches into shards
CUT = "network Cut\ninput 32x32x8\nConv(32, 3) -> ReLU -> GlobalAvgPool -> FC(4)\n"
LAYER_KEYS = {"name": str, "op": str, "shape": list, "macs": int, "memory": int}
TIME_KEYS = ("forward_ms", "backward_ms", "total_ms", "share", "gflops")


def layer_names(model) -> list[str]:
    return [name for name, node in model.graph.nodes(data=True) if node["op"] != "Input"]


def run_profile(text: str, batch: int = 4, steps: int = 2):
    model = cnndsl.compile(text)
    return model, profile(model, batch=batch, steps=steps, warmup=1)


def check_rows(model, result) -> None:
    assert [layer.name for layer in result.layers] == layer_names(model)
    for layer in result.layers:
        if layer.fused_into:
            continue
        assert layer.forward_ms is not None and layer.forward_ms >= 0
        assert layer.backward_ms is None or layer.backward_ms >= 0
        assert layer.memory == math.prod(layer.shape) * result.batch * 4
    shares = [result.share(layer.total_ms) for layer in result.layers if not layer.fused_into]
    shares += [result.share(result.loss_ms), result.share(result.optimizer_ms)]
    assert sum(shares) == pytest.approx(100.0)
    assert result.profiled_ms == pytest.approx(result.layers_ms + result.loss_ms
                                               + result.optimizer_ms)
    assert result.loss_ms >= 0 and result.optimizer_ms >= 0 and result.step_ms > 0


def test_one_row_per_layer_with_fused_activations_marked():
    model, result = run_profile(FUSED)
    check_rows(model, result)
    rows = {layer.name: layer for layer in result.layers}
    # the ReLU before the max pool is taken by the pool (on its input), the one after the
    # FC by the FC (on its output)
    assert rows["relu1"].fused_into == "maxpool1" and rows["relu2"].fused_into == "fc1"
    for relu in ("relu1", "relu2"):
        assert rows[relu].forward_ms is None and rows[relu].backward_ms is None
        assert rows[relu].memory == 0
    assert rows["fc2"].fused_into is None and rows["fc2"].backward_ms is not None
    # the loss is computed from the logits: the Softmax runs forward only
    assert rows["softmax1"].backward_ms is None
    assert rows["conv1"].op == "Conv(4, 3)" and rows["conv1"].shape == (12, 12, 4)


def test_flops_convention():
    """2 FLOPs per MAC; backward 2x the forward MACs, 1x for the layer on the input."""
    _, result = run_profile(FUSED, batch=5)
    rows = {layer.name: layer for layer in result.layers}
    conv, fc = rows["conv1"], rows["fc1"]
    assert conv.forward_flops == 2 * conv.macs * 5 and conv.backward_flops == 2 * conv.macs * 5
    assert fc.backward_flops == 2 * fc.forward_flops
    assert rows["maxpool1"].gflops is None  # no MACs


def test_multi_branch_network():
    model, result = run_profile(BRANCHES)
    check_rows(model, result)
    merges = [layer for layer in result.layers if layer.op in ("{ | } concat", "{ + } sum")]
    assert len(merges) == 2 and all(m.backward_ms is not None for m in merges)


def test_one_dimensional_network():
    model, result = run_profile(ONE_D, batch=3)
    check_rows(model, result)
    assert result.layers[0].shape == (32, 4)  # pad=same, stride 2


def test_json_keys_and_types():
    model, result = run_profile(FUSED)
    data = json.loads(json.dumps(result.to_json()))
    assert data["name"] == "Tiny" and data["input"] == [12, 12, 2] and data["batch"] == 4
    assert data["steps"] == 2 and data["dtype"] == "float32"
    assert len(data["layers"]) == len(layer_names(model))
    for layer in data["layers"]:
        for key, kind in LAYER_KEYS.items():
            assert isinstance(layer[key], kind), key
        for key in TIME_KEYS:
            assert layer[key] is None or isinstance(layer[key], float), key
        assert layer["fused_into"] is None or isinstance(layer["fused_into"], str)
    fused = next(layer for layer in data["layers"] if layer["fused_into"])
    assert all(fused[key] is None for key in TIME_KEYS)
    assert data["loss"]["op"] == "softmax cross-entropy"
    assert data["optimizer"]["op"] == "adam" and data["optimizer"]["params"] == model.num_params
    totals = data["totals"]
    for key in ("forward_ms", "backward_ms", "layers_ms", "profiled_ms", "step_ms",
                "coverage", "timed_step_ms", "normal_step_ms"):
        assert isinstance(totals[key], float) and totals[key] >= 0, key
    assert totals["shards"] == 1 and totals["memory"] == result.memory
    shares = [layer["share"] or 0.0 for layer in data["layers"]]
    assert sum(shares) + data["loss"]["share"] + data["optimizer"]["share"] == \
        pytest.approx(100.0)
    assert totals["coverage"] == pytest.approx(100 * totals["profiled_ms"] / totals["step_ms"])


def test_a_network_that_training_cuts_is_also_measured_as_trained():
    from cnndsl.parallel import shard_count

    model = cnndsl.compile(CUT)
    cuts = model._cuts()
    result = profile(model, batch=16, steps=1, warmup=1)
    assert result.cuts == cuts
    assert result.shards == (shard_count(16) if cuts else 1)
    assert result.normal_step_ms > 0
    # the model is left as it was: cutting on, no clock
    assert model.data_parallel and model._runners[0].timer is None


def test_the_clock_changes_nothing_a_step_computes():
    x = np.random.default_rng(1).standard_normal((6, 12, 12, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    plain, clocked = cnndsl.compile(FUSED), cnndsl.compile(FUSED)
    clock = LayerClock()
    clocked._runners[0].timer = clock
    loss, probs, grads = plain.loss_and_grads(x, labels)
    loss2, probs2, grads2 = clocked.loss_and_grads(x, labels)
    assert loss == loss2 and np.array_equal(probs, probs2)
    assert all(np.array_equal(grads[name], grads2[name]) for name in grads)
    forward, backward, between = clock.durations()
    names = layer_names(clocked)
    assert list(forward) == names  # every layer, in order
    assert "softmax1" not in backward and set(backward) == set(names) - {"softmax1"}
    marks = [stamp for phase, _, stamp in clock.marks if phase == "forward"]
    assert sum(forward.values()) == pytest.approx(marks[-1] - marks[0])
    assert between >= 0


def test_layer_clock_arithmetic():
    clock = LayerClock()
    clock.marks = [("forward", None, 1.0), ("forward", "a", 1.5), ("forward", "b", 3.0),
                   ("backward", None, 3.25), ("backward", "b", 4.0), ("backward", "a", 4.5)]
    assert clock.durations() == ({"a": 0.5, "b": 1.5}, {"b": 0.75, "a": 0.5}, 0.25)


def test_cli_table(capsys):
    path = EXAMPLES / "lecture.cnn"
    assert main(["profile", str(path), "--batch", "4", "--steps", "1", "--set", "k=1"]) == 0
    out, err = capsys.readouterr()
    assert "warm-up" in err
    lines = out.splitlines()
    model = cnndsl.load(path, k=1)
    for name in layer_names(model):
        assert sum(line.split()[0] == name for line in lines if line.strip()) == 1, name
    assert any(line.startswith("relu1") and line.endswith("fused into maxpool1")
               for line in lines)
    assert any(line.startswith("loss ") for line in lines)
    assert any(line.startswith("optimizer ") for line in lines)
    assert "of the measured step" in out and "measured step" in out


def test_cli_json(capsys, tmp_path):
    net = tmp_path / "net.cnn"
    net.write_text(ONE_D)
    assert main(["profile", str(net), "--batch", "2", "--steps", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == layer_names(cnndsl.compile(ONE_D))
    assert data["batch"] == 2 and data["steps"] == 1


@pytest.mark.parametrize("flags", [["--batch", "0"], ["--steps", "0"], ["--batch", "x"]])
def test_bad_flags_are_usage_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", str(EXAMPLES / "lecture.cnn"), *flags])
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_errors_in_the_file_are_located(tmp_path, capsys):
    net = tmp_path / "bad.cnn"
    net.write_text("network Bad\ninput 4x4x1\nConv(8, 5, pad=valid) -> FC(2)\n")
    assert main(["profile", str(net)]) == 1
    err = capsys.readouterr().err
    assert f"{net}:3:" in err and "Traceback" not in err


def test_a_step_too_large_for_memory_is_refused(tmp_path, capsys):
    net = tmp_path / "huge.cnn"
    net.write_text("network Huge\ninput 512x512x3\nConv(64, 3) -> GlobalAvgPool -> FC(2)\n")
    assert main(["profile", str(net), "--batch", "1000000"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "batch" in err and "Traceback" not in err
