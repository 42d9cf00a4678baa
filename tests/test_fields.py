"""Receptive field, jump, resolved padding, activation memory and depth (cnndsl.fields,
`cnndsl check --rf/--memory/--batch`): against values derived by hand, published figures,
and a numerical check through the model's own backward."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
import cnndsl.model
from cnndsl.cli import main


def node(graph, name: str) -> dict:
    return graph.nodes[name]


def check(text: str):
    return cnndsl.check_text(text)


# ---- hand-derived values -------------------------------------------------------------------


def test_dilated_chain_grows_3_7_15():
    graph = check("input 64x64x1\nConv(4, 3x3, dilation=1) -> Conv(4, 3x3, dilation=2) "
                  "-> Conv(4, 3x3, dilation=4)")
    assert [node(graph, f"conv{i}")["receptive_field"] for i in (1, 2, 3)] == \
        [(3, 3), (7, 7), (15, 15)]
    assert [node(graph, f"conv{i}")["jump"] for i in (1, 2, 3)] == [(1, 1)] * 3
    # pad=same with dilation d pads d on each side of a 3-wide kernel
    assert [node(graph, f"conv{i}")["padding"] for i in (1, 2, 3)] == \
        [((1, 1), (1, 1)), ((2, 2), (2, 2)), ((4, 4), (4, 4))]


def test_strides_multiply_the_jump_and_pooling_grows_the_field():
    # r: 1 -> 3 (conv 3) -> 4 (pool 2, j 1) -> 4 + 2*2 = 8 (conv 3 at j 2) -> 8 + 1*4 = 12
    graph = check("input 32x32x1\nConv(4, 3x3) -> MaxPool(2) -> Conv(4, 3x3) -> "
                  "AvgPool(2, stride=2)")
    assert node(graph, "maxpool1")["receptive_field"] == (4, 4)
    assert node(graph, "maxpool1")["jump"] == (2, 2)
    assert node(graph, "conv2")["receptive_field"] == (8, 8)
    assert node(graph, "avgpool1")["receptive_field"] == (10, 10)
    assert node(graph, "avgpool1")["jump"] == (4, 4)


@pytest.mark.parametrize("size,kernel,out,padding", [
    (7, 3, 4, (1, 1)),   # odd input: total 2*3 + 3 - 7 = 2, split evenly
    (8, 3, 4, (0, 1)),   # even input: total 1, the extra zero after (SAME_UPPER)
    (8, 4, 4, (1, 1)),   # even kernel: total 6 + 4 - 8 = 2
    (9, 4, 5, (1, 2)),   # total 8 + 4 - 9 = 3
    (5, 1, 3, (0, 0)),   # 1x1 never pads
])
def test_same_padding_with_stride_2(size, kernel, out, padding):
    graph = check(f"input {size}x{size}x1\nConv(2, {kernel}x{kernel}, stride=2, pad=same)")
    conv = node(graph, "conv1")
    assert conv["shape"] == (out, out, 2)
    assert conv["padding"] == (padding, padding)
    assert conv["jump"] == (2, 2)
    assert conv["receptive_field"] == (kernel, kernel)


def test_padding_forms_resolve_per_axis_and_side():
    graph = check("input 10x12x1\nConv(2, 3x5, pad=valid) -> Conv(2, 3x3, pad=(1, 0)) -> "
                  "MaxPool(2, stride=1, pad=full) -> Conv(2, 2x2, pad=same)")
    assert node(graph, "conv1")["padding"] == ((0, 0), (0, 0))
    assert node(graph, "conv2")["padding"] == ((1, 1), (0, 0))
    assert node(graph, "maxpool1")["padding"] == ((1, 1), (1, 1))
    assert node(graph, "conv3")["padding"] == ((0, 1), (0, 1))


def test_fc_and_global_pool_read_the_whole_map():
    graph = check("input 16x16x1\nConv(2, 3x3, stride=2) -> GlobalAvgPool -> FC(3) -> FC(2)")
    # conv: r 3, j 2 on an 8x8 map; the pool reads all 8: 3 + 7 * 2 = 17
    assert node(graph, "globalavgpool1")["receptive_field"] == (17, 17)
    assert node(graph, "fc1")["receptive_field"] == (17, 17)  # a flat input: unchanged
    assert node(graph, "fc1")["padding"] == ()
    flat = check("input 784\nFC(10) -> ReLU")
    assert node(flat, "fc1")["receptive_field"] == () and node(flat, "fc1")["jump"] == ()


def test_transposed_conv_has_a_fractional_jump():
    graph = check("input 8x8x1\nConv(2, 3x3, stride=2) -> ConvT(2, 4, stride=2) -> "
                  "ConvT(2, 3, stride=2)")
    assert node(graph, "convt1")["jump"] == (1, 1)
    assert node(graph, "convt1")["receptive_field"] == (3 + 1 * 2, 3 + 1 * 2)
    assert [float(j) for j in node(graph, "convt2")["jump"]] == [0.5, 0.5]
    assert node(graph, "convt2")["receptive_field"] == (5 + 1 * 1, 5 + 1 * 1)  # ceil(3/2)=2
    layers = {row["name"]: row for row in json.loads(_check_json(graph))["layers"]}
    assert layers["convt2"]["jump"] == [0.5, 0.5]


def test_a_window_after_a_fractional_jump_has_a_whole_field():
    """Conv(1, 2) after a stride-2 ConvT spans 1 + 1/2 pixels of the ConvT's field: it reads
    whole pixels, so the field rounds up (it was 5/2, which JSON could not hold)."""
    graph = check("input 8x8x1\nConvT(1, 3, stride=2) -> Conv(1, 2) -> Upsample(2) -> "
                  "Conv(1, 3)")
    assert node(graph, "conv1")["receptive_field"] == (3, 3)  # ceil(2 + 1/2)
    assert all(isinstance(r, int) for n in graph.nodes.values() for r in n["receptive_field"])
    layers = {row["name"]: row for row in json.loads(_check_json(graph))["layers"]}
    assert layers["conv1"]["receptive_field"] == [3, 3]


def _check_json(graph) -> str:
    from cnndsl.summary import to_json

    return json.dumps(to_json(graph))


def test_one_and_three_dimensional_fields():
    graph = check("input 100x1\nConv(4, 5, stride=2) -> MaxPool(2) -> Conv(4, 3, dilation=2)")
    assert node(graph, "conv2")["receptive_field"] == (5 + 1 * 2 + 4 * 4,)
    assert node(graph, "conv2")["jump"] == (4,)
    cube = check("input 16x16x16x1\nConv(2, 3x3x3) -> MaxPool(2) -> Conv(2, 1x3x5)")
    assert node(cube, "conv2")["receptive_field"] == (4, 4 + 2 * 2, 4 + 4 * 2)


def test_merges_take_the_largest_field_of_their_branches():
    graph = check("input 16x16x4\n{ Identity + Conv(4, 3x3) -> Conv(4, 3x3) } -> "
                  "{ Conv(4, 1x1) | Conv(4, 5x5) }")
    assert node(graph, "add1")["receptive_field"] == (5, 5)
    assert node(graph, "concat1")["receptive_field"] == (9, 9)


# ---- published networks --------------------------------------------------------------------


def test_vgg16_fields_and_depth():
    graph = cnndsl.check_file(EXAMPLES / "vgg16.cnn")
    assert node(graph, "conv13")["receptive_field"] == (196, 196)  # conv5_3
    assert node(graph, "maxpool5")["receptive_field"] == (212, 212)
    assert node(graph, "maxpool5")["jump"] == (32, 32)
    assert graph.graph["depth"] == 16


def test_resnet18_field_through_the_main_path_and_depth():
    graph = cnndsl.check_file(EXAMPLES / "resnet18.cnn")
    convs = [n for n, d in graph.nodes(data=True) if d["op"] == "Conv"]
    assert graph.nodes[convs[-1]]["receptive_field"] == (435, 435)
    assert graph.graph["depth"] == 18


@pytest.mark.parametrize("name,depth", [("alexnet.cnn", 8), ("googlenet.cnn", 22),
                                        ("googlenet_v1.cnn", 22), ("xception.cnn", 37),
                                        ("mobilenet_v1.cnn", 28), ("densenet121.cnn", 121),
                                        ("lenet5.cnn", 5)])
def test_published_depths(name, depth):
    assert cnndsl.check_file(EXAMPLES / name).graph["depth"] == depth


# ---- the numerical check: which input pixels reach one output unit ------------------------


NUMERIC_NETS = [
    ("input 40x40x1\nConv(2, 3x3, dilation=1) -> Conv(2, 3x3, dilation=2) -> "
    "Conv(2, 3x3, dilation=4)"),
    "input 41x37x2\nConv(3, 5x3, stride=2) -> AvgPool(3, stride=2) -> Conv(2, 3x3, stride=2)",
    ("input 48x48x1\nConv(2, 4x4, stride=2, pad=same) -> Tanh -> AvgPool(2) -> "
    "DepthwiseConv(5x5) -> SeparableConv(2, 3x3)"),
    "input 40x40x2\n{ Conv(2, 5x5) | Conv(2, 3x3) -> Conv(2, 3x3) } -> Conv(2, 3x3, stride=2)",
    "input 90x1\nConv(2, 5, stride=2) -> AvgPool(2) -> Conv(2, 3, dilation=3)",
    "input 20x20x20x1\nConv(1, 3x3x3, stride=2) -> Conv(1, 1x3x5)",
]


def input_extent(model, layer: str) -> tuple[int, ...]:
    """Per spatial axis, the extent of the input pixels whose gradient is non-zero for the
    central unit of `layer` (positive weights and inputs, so nothing cancels)."""
    rng = np.random.default_rng(0)
    for array in model.parameters().values():
        array[...] = rng.uniform(0.1, 1.0, size=array.shape)
    x = rng.uniform(0.1, 1.0, size=(1, *model.input_shape)).astype(np.float32)
    shape = model.graph.nodes[layer]["shape"]
    gy = np.zeros((1, *shape), dtype=np.float32)
    gy[(0, *(s // 2 for s in shape[:-1]), 0)] = 1.0
    model.forward(x)
    dx, _ = model.backward(gy)
    touched = np.nonzero(np.abs(dx[0]).sum(axis=-1))
    return tuple(int(axis.max() - axis.min() + 1) for axis in touched), touched, dx.shape[1:-1]


@pytest.mark.parametrize("text", NUMERIC_NETS)
def test_reported_field_is_the_extent_of_the_nonzero_input_gradient(text):
    graph = cnndsl.check_text(text)
    last = graph.graph["output"]
    extent, touched, sizes = input_extent(cnndsl.model.Model(graph), last)
    for axis, (low, high) in enumerate(zip((t.min() for t in touched),
                                           (t.max() for t in touched))):
        assert 0 < low and high < sizes[axis] - 1, "the field touches the border: grow the input"
    assert extent == graph.nodes[last]["receptive_field"]


# ---- depth and memory ----------------------------------------------------------------------


def test_depth_counts_weight_layers_on_the_longest_path():
    graph = check("input 16x16x4\n{ Identity + Conv(4, 3x3) -> BatchNorm -> Conv(4, 3x3) } "
                  "-> { Conv(4, 1x1) + Identity } -> FC(4) -> ReLU -> FC(2)")
    assert graph.graph["depth"] == 2 + 1 + 2


def test_memory_per_layer_and_for_a_training_step(capsys):
    graph = check("input 8x8x1\nConv(4, 3x3) -> MaxPool(2) -> FC(2)")
    assert [node(graph, n)["memory"] for n in ("input", "conv1", "maxpool1", "fc1")] == \
        [8 * 8 * 4, 8 * 8 * 4 * 4, 4 * 4 * 4 * 4, 2 * 4]
    from cnndsl.summary import to_json

    memory = to_json(graph, batch=10)["memory"]
    assert memory == {"forward_per_example": 256 + 1024 + 256 + 8, "batch": 10,
                      "training_step": 2 * (1024 + 256 + 8) * 10, "params": (40 + 130) * 4}


def test_check_batch_defaults_to_the_train_block(tmp_path, capsys):
    path = tmp_path / "net.cnn"
    path.write_text("input 8x8x1\ntrain { batch = 16 }\nConv(4, 3x3) -> FC(2)\n")
    assert main(["check", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["batch"] == 16
    assert main(["check", "--json", "--batch", "3", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["training_step"] == \
        2 * (8 * 8 * 4 + 2) * 4 * 3
    assert main(["check", str(path)]) == 0
    assert "for a training step at batch 16" in capsys.readouterr().out


def test_batch_below_one_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "net.cnn"
    path.write_text("input 8x8x1\nFC(2)\n")
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--batch", "0", str(path)])
    assert exit_.value.code == 2


# ---- the table -----------------------------------------------------------------------------


def table_rows(out: str) -> dict[str, list[str]]:
    """{layer: cells} of a check table, and "header": its column names (cells are separated
    by two or more spaces)."""
    lines = out.splitlines()
    rule = [i for i, line in enumerate(lines) if set(line) == {"-"}]

    def cells(line):
        return re.split(r"\s{2,}", line.strip())

    rows = {cells(line)[0]: cells(line) for line in lines[rule[1] + 1:rule[2]]}
    return rows | {"header": cells(lines[rule[0] + 1])}


def test_table_columns_rf_and_memory(tmp_path, capsys):
    path = tmp_path / "net.cnn"
    path.write_text("input 9x9x1\nConv(2, 3x3, stride=2) -> ReLU -> Conv(2, 2x2, pad=same)\n")
    assert main(["check", str(path)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["header"] == ["layer", "op", "output shape", "RF", "params", "MACs"]
    assert rows["conv2"][3] == "5x5"  # 3 + (2 - 1) * 2
    assert main(["check", "--rf", "--memory", str(path)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["header"] == ["layer", "op", "output shape", "RF", "padding", "jump",
                              "memory", "params", "MACs"]
    # conv1: 3x3/2 on 9, same -> 5, pads 1 each side; conv2: 2x2 on 5, same -> 0+1
    assert rows["conv1"][2:6] == ["5x5x2", "3x3", "1", "2x2"]
    assert rows["relu1"][2:6] == ["5x5x2", "3x3", "2x2", "200 bytes"]  # no window: no padding
    assert rows["conv2"][2:7] == ["5x5x2", "5x5", "0+1", "2x2", "200 bytes"]
    assert "depth:        2 (conv and FC layers on the longest path)" in out


def test_shape_error_prints_the_table_up_to_the_failing_layer(tmp_path, capsys):
    path = tmp_path / "net.cnn"
    path.write_text("input 9x9x1\nConv(4, 3x3) -> ReLU -> MaxPool(2) -> "
                    "Conv(4, 5x5, pad=valid) -> FC(10)\n")
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == ("network network: input 9x9x1, stopped at 'conv2' "
                        "(3 layers checked before it)")
    names = [line.split()[0] for line in lines[4:-1]]
    assert names == ["input", "conv1", "relu1", "maxpool1", "conv2"]
    assert lines[-2].split()[-5:] == ["shape", "error", "<--", "the", "error", "below"][1:]
    assert "fc1" not in captured.out
    assert captured.err.startswith(f"{path}:2:39: error: Conv 'conv2' (input 4x4x4)")


def test_shape_error_json_has_the_partial_layers(tmp_path, capsys):
    path = tmp_path / "net.cnn"
    path.write_text("input 9x9x1\n{ Conv(4, 3x3) + Conv(4, 3x3, pad=valid) } -> FC(2)\n")
    assert main(["check", "--json", str(path)]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["name"] == "network" and data["input"] == [9, 9, 1]
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2", "add1"]
    assert data["layers"][1]["receptive_field"] == [3, 3]
    assert set(data["layers"][-1]) == {"name", "op", "error"}
    error = data["error"]
    assert error["layer"] == "add1" and error["kind"] == "ShapeError"
    assert (error["line"], error["col"]) == (2, 1)
    assert error["message"] == data["layers"][-1]["error"]
    assert captured.err.startswith(f"{path}:2:1: error: ")
