"""Every example checks, with its published parameter count and output shape."""

import json

import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.cli import main
from cnndsl.shapes import totals

# published parameter counts (PyTorch / torchvision / Keras-trainable), output shapes
PUBLISHED = {
    "lenet5.cnn": (61_706, (10,)),            # LeCun et al. 1998
    "mnist_pytorch.cnn": (21_840, (10,)),     # the lecture's PyTorch MNIST example
    # computed: bare Conv = 32 3x3, bare FC = 128, then FC(classes = 10): 228,896 + 1,290
    "lecture.cnn": (230_186, (10,)),
    "alexnet.cnn": (61_100_840, (1000,)),     # torchvision
    "vgg16.cnn": (138_357_544, (1000,)),      # torchvision
    "resnet18.cnn": (11_689_512, (1000,)),    # torchvision
    "googlenet.cnn": (6_624_904, (1000,)),    # torchvision, without auxiliary heads
    # the paper's Table 1 with true 5x5 branches: weights + biases, no auxiliary heads
    "googlenet_v1.cnn": (6_998_552, (1000,)),
    "xception.cnn": (22_855_952, (1000,)),   # Keras, trainable (22,910,480 in all)
    "mobilenet_v1.cnn": (4_231_976, (1000,)),  # Keras, trainable parameters
    "densenet121.cnn": (7_978_856, (1000,)),  # torchvision
    "m5_audio_1d.cnn": (559_114, (10,)),      # M5 (Dai et al.): ~0.5M as published
    "voxnet_3d.cnn": (917_866, (10,)),        # VoxNet on 32^3 grids, 10 classes
    # our Fashion-MNIST examples (counted by hand: 320 + 18,496 + 401,536 + 1,290)
    "fashion_small.cnn": (421_642, (10,)),
    "fashion_2conv.cnn": (870_826, (10,)),
    "fashion_100k.cnn": (96_554, (10,)),
}

# torchinfo's "Total mult-adds" for the same PyTorch models at batch 1
# (benchmarks/torchinfo_reference.py; torchinfo also counts BatchNorm's 2C per layer)
TORCHINFO_MACS = {"resnet18.cnn": 1_814_083_944, "vgg16.cnn": 15_483_821_032}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.cnn")) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts_and_output(name):
    graph = cnndsl.check_file(str(EXAMPLES / name))
    params, _ = totals(graph)
    expected_params, expected_output = PUBLISHED[name]
    assert params == expected_params
    assert graph.nodes[graph.graph["output"]]["shape"] == expected_output


@pytest.mark.parametrize("name", sorted(TORCHINFO_MACS))
def test_macs_within_2_percent_of_torchinfo(name):
    _, macs = totals(cnndsl.check_file(str(EXAMPLES / name)))
    assert abs(macs - TORCHINFO_MACS[name]) / TORCHINFO_MACS[name] < 0.02


def test_intermediate_shapes_of_resnet18():
    graph = cnndsl.check_file(str(EXAMPLES / "resnet18.cnn"))
    shapes = {n: graph.nodes[n]["shape"] for n in graph.nodes}
    assert shapes["conv1"] == (112, 112, 64)  # the stem conv
    assert shapes["maxpool1"] == (56, 56, 64)
    merges = [n for n in graph.nodes if graph.nodes[n]["op"] == "Add"]
    assert [shapes[m] for m in merges] == [(56, 56, 64)] * 2 + [(28, 28, 128)] * 2 + \
        [(14, 14, 256)] * 2 + [(7, 7, 512)] * 2


def test_googlenet_inception_outputs():
    graph = cnndsl.check_file(str(EXAMPLES / "googlenet.cnn"))
    concat_channels = [graph.nodes[n]["shape"] for n in graph.nodes
                       if graph.nodes[n]["op"] == "Concat"]
    assert concat_channels == [(28, 28, 256), (28, 28, 480), (14, 14, 512), (14, 14, 512),
                               (14, 14, 512), (14, 14, 528), (14, 14, 832), (7, 7, 832),
                               (7, 7, 1024)]


def test_densenet_channels_grow_by_32():
    graph = cnndsl.check_file(str(EXAMPLES / "densenet121.cnn"))
    concats = [graph.nodes[n]["shape"][-1] for n in graph.nodes
               if graph.nodes[n]["op"] == "Concat"]
    assert len(concats) == 58
    assert concats[:6] == [96, 128, 160, 192, 224, 256]
    assert concats[-1] == 1024


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_check_prints_table_and_json(name, capsys):
    path = str(EXAMPLES / name)
    assert main(["check", path]) == 0
    table = capsys.readouterr().out
    assert "total params" in table and f"{PUBLISHED[name][0]:,}" in table
    assert main(["check", "--json", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"name", "input", "output", "params", "macs", "depth", "memory",
                         "layers"}
    assert data["params"] == PUBLISHED[name][0]
    assert data["output"] == list(PUBLISHED[name][1])
    assert sum(layer["params"] for layer in data["layers"]) == data["params"]
    assert sum(layer["macs"] for layer in data["layers"]) == data["macs"]
    for layer in data["layers"]:
        assert set(layer) == {"name", "op", "shape", "params", "macs", "padding",
                              "receptive_field", "jump", "memory"}
