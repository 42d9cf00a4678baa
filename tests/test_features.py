"""`Model.features`: every layer's own output, checked against PyTorch's intermediate
outputs (forward hooks), through fused Conv -> ReLU pairs, branches and merges."""

import numpy as np
import pytest

import cnndsl
from cnndsl.model import Model
from cnndsl.ops import OPS

# an Inception-like concat, a residual add, Conv -> ReLU pairs the run plan fuses,
# BatchNorm (eval, non-trivial running statistics), pooling, Dropout and FC
MULTI_BRANCH = """
input 10x10x3
stem: Conv(6, 3) -> ReLU
  -> { b1: Conv(2, 1) -> ReLU | Conv(3, 3, bias=false) -> BatchNorm -> ReLU
     | MaxPool(3, 1, pad=1) -> Conv(2, 1) }
  -> { Identity + Conv(7, 3) -> ReLU -> Conv(7, 3) } -> ReLU
  -> AvgPool(2) -> Dropout(0.3) -> FC(5) -> ReLU -> FC(4) -> Softmax
"""


def model_of(text, seed=0):
    return Model(cnndsl.check_text(text), seed=seed)


def batch(model, n=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *model.input_shape)).astype(np.float32)


def fused_layers(model):
    """Layers whose run-plan step also computes the ReLU after them."""
    return [layer.name for layer in model.layers
            if layer.geometry is not None and layer.geometry.get("activation") == "relu"]


def torch_module(model):
    """The model's graph as a torch.nn.Module with one submodule per layer (each running
    torch_reference.run_node, float64), so forward hooks can capture every layer."""
    import torch
    from torch_reference import nchw, run_node

    graph = model.graph
    params = {name: torch.from_numpy(a.astype("float64")) for name, a in model.parameters().items()}
    buffers = {name: torch.from_numpy(a.astype("float64").copy())
               for name, a in model.buffers().items()}

    class Layer(torch.nn.Module):
        def __init__(self, name, node):
            super().__init__()
            self.node = node
            in_shapes = [graph.nodes[i]["shape"] for i in node["inputs"]]
            self.geometry = OPS[node["op"]].geometry(node["params"], in_shapes)
            self.rank = len(in_shapes[0]) - 1
            self.local = {key.split(".", 1)[1]: value for key, value in
                          {**params, **buffers}.items() if key.split(".", 1)[0] == name}

        def forward(self, *xs):
            return run_node(self.node["op"], self.node["params"], self.geometry, self.local,
                            list(xs), self.rank, False)

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = torch.nn.ModuleDict({name: Layer(name, node)
                                              for name, node in graph.nodes(data=True)
                                              if node["op"] != "Input"})

        def forward(self, x):
            values = {model.input_name: nchw(x)}
            for name, step in self.steps.items():  # the graph's (topological) order
                values[name] = step(*[values[i] for i in graph.nodes[name]["inputs"]])
            return values[model.output_name]

    return Network().eval()


def torch_features(model, x):
    """name -> output captured by a forward hook on that layer's module (channels-last)."""
    from torch_reference import to_numpy_channels_last

    network = torch_module(model)
    captured = {}
    for name, step in network.steps.items():
        step.register_forward_hook(
            lambda module, inputs, output, name=name: captured.__setitem__(name, output))
    network(x)
    return {name: to_numpy_channels_last(t) for name, t in captured.items()}


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def test_features_match_pytorch_forward_hooks_on_a_multi_branch_network():
    pytest.importorskip("torch")
    model = model_of(MULTI_BRANCH, seed=3)
    model.forward(batch(model, 8, seed=2), train=True)  # non-trivial BatchNorm statistics
    assert len(fused_layers(model)) >= 3  # the comparison goes through fused pairs
    x = batch(model)
    ours = model.features(x)
    theirs = torch_features(model, x)
    assert list(ours) == list(theirs)  # every layer, the input excluded, in order
    assert any(OPS[model.graph.nodes[n]["op"]].name == "Concat" for n in ours)
    for name, value in ours.items():
        assert value.shape == (len(x), *model.graph.nodes[name]["shape"]), name
        assert relative_error(value, theirs[name]) < 1e-4, name


def test_a_fused_conv_gives_its_output_before_the_relu():
    model = model_of(MULTI_BRANCH)
    assert "stem" in fused_layers(model)
    x = batch(model)
    features = model.features(x)
    assert features["stem"].min() < 0  # the run plan's stem step returns max(conv, 0)
    assert np.array_equal(features["relu1"], np.maximum(features["stem"], 0))
    # the plan's own value of the pair is the ReLU's, as features gives it
    assert np.allclose(features["softmax1"], model.forward(x), atol=1e-6)


def test_named_layers_come_in_the_order_asked():
    model = model_of(MULTI_BRANCH)
    x = batch(model)
    every = model.features(x)
    some = model.features(x, layers=["fc1", "stem", "concat1"])
    assert list(some) == ["fc1", "stem", "concat1"]
    for name, value in some.items():
        assert np.array_equal(value, every[name]), name
    assert list(model.features(x, layers="b1")) == ["b1"]


def test_an_unknown_layer_is_a_value_error_with_a_suggestion():
    model = model_of(MULTI_BRANCH)
    with pytest.raises(ValueError, match="no layer 'stme'; did you mean 'stem'"):
        model.features(batch(model), layers=["stme"])
    with pytest.raises(ValueError, match="no layer 'input'"):  # the input is not a layer
        model.features(batch(model), layers=["input"])
    with pytest.raises(ValueError, match="takes input of shape"):
        model.features(np.zeros((1, 4, 4, 3), np.float32))


def test_features_leave_forward_and_backward_unchanged():
    model = model_of(MULTI_BRANCH)
    x = batch(model)
    y = model.forward(x)
    gx, grads = model.backward(np.ones_like(y))
    model.features(x, layers=["stem"])
    model.features(batch(model, 5, seed=9))
    assert np.array_equal(model.forward(x), y)
    gx_after, grads_after = model.backward(np.ones_like(y))
    assert np.array_equal(gx_after, gx)
    assert all(np.array_equal(grads_after[n], grads[n]) for n in grads)
    assert len(fused_layers(model)) >= 3  # the run plan is still the fused one


def test_features_in_one_and_three_dimensions():
    for text in ("input 20x2\nConv(3, 5) -> ReLU -> MaxPool(2) -> FC(2)",
                 "input 6x6x6x1\nConv(2, 3) -> ReLU -> MaxPool(2) -> FC(2)"):
        model = model_of(text)
        features = model.features(batch(model, 2))
        assert features["conv1"].min() < 0
        assert np.array_equal(features["relu1"], np.maximum(features["conv1"], 0))
        assert features["maxpool1"].shape == (2, *model.graph.nodes["maxpool1"]["shape"])
