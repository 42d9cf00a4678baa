"""The issue-14 examples: Xception (Keras), GoogLeNet as the paper's Table 1 builds it, and a
Fashion-MNIST network under 100,000 parameters; their counts, shapes and training settings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.shapes import totals


def checked(name: str):
    return cnndsl.check_file(str(EXAMPLES / name))


def nodes_of(graph, op: str) -> list[dict]:
    """The attributes of every node running `op`, in the graph's (topological) order."""
    return [graph.nodes[n] for n in graph.nodes if graph.nodes[n]["op"] == op]


def output_shape(graph) -> tuple:
    return graph.nodes[graph.graph["output"]]["shape"]


# ---- Xception ---------------------------------------------------------------------------

XCEPTION_TRAINABLE = 22_855_952   # keras.applications.Xception(): trainable params
XCEPTION_KERAS_TOTAL = 22_910_480  # Keras' total, BatchNorm moving mean and variance included


def test_xception_counts_the_keras_trainable_parameters():
    graph = checked("xception.cnn")
    params, _ = totals(graph)
    assert params == XCEPTION_TRAINABLE
    assert output_shape(graph) == (1000,)


def test_xception_buffers_are_the_rest_of_keras_total():
    graph = checked("xception.cnn")
    buffers = sum(int(np.prod(shape)) for attrs in nodes_of(graph, "BatchNorm")
                  for shape in attrs["buffer_shapes"].values())
    assert XCEPTION_TRAINABLE + buffers == XCEPTION_KERAS_TOTAL


def test_xception_flows():
    """Entry flow 299 -> 19x19x728, eight middle blocks at 19x19x728, exit to 10x10x1024;
    36 conv layers (2 plain, 34 separable) besides the four 1x1 shortcuts."""
    graph = checked("xception.cnn")
    merges = [attrs["shape"] for attrs in nodes_of(graph, "Add")]
    assert merges == [(74, 74, 128), (37, 37, 256), (19, 19, 728)] + [(19, 19, 728)] * 8 + \
        [(10, 10, 1024)]
    separable = nodes_of(graph, "SeparableConv")
    assert len(separable) == 34
    assert all(not attrs["params"].bias for attrs in separable)
    assert [attrs["params"].kernel for attrs in nodes_of(graph, "Conv")] == \
        [(3, 3), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)]
    assert graph.graph["depth"] == 37


# ---- GoogLeNet, Table 1 -----------------------------------------------------------------

GOOGLENET_V1_PARAMS = 6_998_552   # 6,990,272 weights + 8,280 biases
TABLE_1_INCEPTION_ROWS = [  # #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128)]


def test_googlenet_v1_parameter_count_from_table_1():
    graph = checked("googlenet_v1.cnn")
    params, _ = totals(graph)
    assert params == GOOGLENET_V1_PARAMS
    assert output_shape(graph) == (1000,)
    weights = sum(int(np.prod(attrs["param_shapes"]["weight"]))
                  for op in ("Conv", "FC") for attrs in nodes_of(graph, op))
    assert weights == 6_990_272


def test_googlenet_v1_parameters_computed_from_the_table_rows():
    """The same count, computed from Table 1's columns alone."""
    weights = 7 * 7 * 3 * 64 + 64 * 64 + 9 * 64 * 192 + 1024 * 1000
    biases = 64 + 64 + 192 + 1000
    channels = 192
    for c1, c3r, c3, c5r, c5, proj in TABLE_1_INCEPTION_ROWS:
        weights += channels * (c1 + c3r + c5r + proj) + 9 * c3r * c3 + 25 * c5r * c5
        biases += c1 + c3r + c3 + c5r + c5 + proj
        channels = c1 + c3 + c5 + proj
    assert weights + biases == GOOGLENET_V1_PARAMS


def test_googlenet_v1_has_true_5x5_branches_and_table_1_sizes():
    graph = checked("googlenet_v1.cnn")
    kernels = [attrs["param_shapes"]["weight"][2:] for attrs in nodes_of(graph, "Conv")]
    assert kernels.count((5, 5)) == 9 and kernels.count((3, 3)) == 10
    assert [attrs["shape"] for attrs in nodes_of(graph, "Concat")] == \
        [(28, 28, 256), (28, 28, 480), (14, 14, 512), (14, 14, 512), (14, 14, 512),
         (14, 14, 528), (14, 14, 832), (7, 7, 832), (7, 7, 1024)]
    halving = [attrs["shape"][:2] for attrs in nodes_of(graph, "MaxPool")
               if attrs["params"].stride == 2]
    assert halving == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [attrs["shape"] for attrs in nodes_of(graph, "LRN")] == [(56, 56, 64), (56, 56, 192)]
    assert graph.graph["depth"] == 22


def test_googlenet_v1_is_larger_than_torchvisions_variant():
    params, _ = totals(checked("googlenet.cnn"))
    assert params == 6_624_904
    assert GOOGLENET_V1_PARAMS - params == 373_648


# ---- Fashion-MNIST under 100,000 parameters ----------------------------------------------

SMALL = "fashion_100k.cnn"
SMALL_PARAMS = 96_554
# The settings the README's results table states for this example.
SMALL_TRAIN = {"optimizer": "adam", "lr": 0.002, "batch": 128, "epochs": 10,
               "schedule": "cosine"}


def test_fashion_100k_is_under_100k_parameters():
    graph = checked(SMALL)
    params, _ = totals(graph)
    assert params == SMALL_PARAMS < 100_000
    assert graph.graph["input_shape"] == (28, 28, 1)
    assert output_shape(graph) == (10,)


def test_fashion_100k_train_block_is_the_documented_one():
    settings = checked(SMALL).graph["train_settings"]
    assert settings == SMALL_TRAIN
    assert settings["epochs"] <= 10


def test_fashion_100k_runs_forward_and_backward():
    model = cnndsl.load(str(EXAMPLES / SMALL), seed=0)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    probabilities = model.forward(x)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    loss, _, grads = model.loss_and_grads(x, np.array([3, 7]))
    assert np.isfinite(loss)
    assert set(grads) == set(model.parameters())
    assert sum(g.size for g in grads.values()) == SMALL_PARAMS


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
