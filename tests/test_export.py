"""Export (cnndsl.export): ONNX files run by ONNX Runtime and generated PyTorch modules
compute what `model.forward(x, train=False)` computes, for every example and for small
networks covering every layer kind; PyTorch state_dicts come back bit for bit."""

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.errors import CnnDslError
from cnndsl.export import ExportError
from cnndsl.model import Model
from cnndsl.ops import OPS, user_op_names

# small networks: every layer kind, both branch forms, 1-D/2-D/3-D, asymmetric 'same'
SMALL = {
    "conv_same_stride2": ("8x8x3", "Conv(4, 3, stride=2)"),  # pads 0 before, 1 after
    "conv_dilated_grouped": ("9x9x4", "Conv(6, 3, dilation=2, groups=2, bias=false)"),
    "conv_tuple_pad_full": ("7x6x2", "Conv(3, 3x2, stride=2x1, pad=1x0) -> Conv(2, 2, pad=full)"),
    "convt": ("4x4x3", "ConvT(4, 3, stride=2, pad=1, output_pad=1)"),
    "depthwise": ("8x8x3", "DepthwiseConv(3, stride=2, multiplier=2)"),
    "separable": ("8x8x3", "SeparableConv(4, 3, stride=2) -> SeparableConv(2, 3, bias=false)"),
    "localconv": ("7x6x2", "LocalConv(3, 3) -> LocalConv(2, 2x1, stride=2, bias=false)"),
    "maxpool": ("7x7x3", "MaxPool(3, 2, pad=1) -> MaxPool(2, pad=same)"),
    "avgpool": ("8x8x3", "AvgPool(3, 2, pad=same) -> AvgPool(3, 1, pad=1)"),
    "l2pool": ("8x8x3", "L2Pool(2) -> L2Pool(3, 2, pad=same) -> L2Pool(3, 1, pad=1)"),
    "global_avg": ("5x5x3", "GlobalAvgPool"),
    "global_max": ("5x5x3", "GlobalMaxPool -> BatchNorm -> Softmax"),
    "flatten_fc": ("3x4x2", "Flatten -> FC(5) -> FC(3, bias=false)"),
    "fc_spatial": ("3x4x2", "Dense(5) -> ReLU -> Dropout(0.3) -> FC(4) -> Softmax"),
    "activations": ("5x5x3", "ReLU -> LeakyReLU(0.1) -> Sigmoid -> Tanh -> Identity -> Dropout"),
    "softmax_spatial": ("5x5x3", "Conv(4, 1) -> Softmax"),
    "maxout": ("6x5x4", ("Conv(6, 3) -> Maxout(3) -> Maxout(2) -> Flatten -> FC(4) -> "
                         "Maxout(2)")),  # 2-D, then flat
    "maxout_1d": ("12x4", "Maxout(2) -> Conv(6, 3) -> Maxout(3)"),
    "maxout_3d": ("5x6x4x4", "Maxout(2) -> Conv(6, 3) -> Maxout(3) -> GlobalMaxPool"),
    "batchnorm": ("5x5x3", "BatchNorm(eps=0.001, momentum=0.3) -> Conv(2, 3)"),
    "conv1d": ("40x3", ("Conv(4, 4, stride=2) -> BatchNorm -> MaxPool(3, 2, pad=same) -> "
                       "ConvT(3, 3, stride=2) -> DepthwiseConv(2, stride=2) -> "
                       "SeparableConv(3, 3) -> L2Pool(2, pad=same) -> AvgPool(2) -> "
                       "LocalConv(2, 2) -> Softmax")),
    "conv3d": ("9x8x10x2", ("Conv(4, 3, stride=2) -> BatchNorm -> LeakyReLU -> "
                           "MaxPool(2, pad=same) -> ConvT(2, 3, stride=2) -> "
                           "{ AvgPool(2) | L2Pool(2) } -> DepthwiseConv(2) -> "
                           "SeparableConv(3, 2) -> LocalConv(2, 2) -> GlobalMaxPool -> FC(3)")),
    "branches": ("8x8x3", """
        def res(c) = { Identity + Conv(c, 3, bias=false) -> BatchNorm -> ReLU -> Conv(c, 3) }
        Conv(4, 3) -> res(4) -> ReLU
          -> { Conv(2, 1) | Conv(3, 3) -> LeakyReLU(0.2) | MaxPool(3, 1, pad=1) -> Conv(2, 1) }
          -> { Identity | BatchNorm -> Conv(3, 4) }
          -> AvgPool(2) -> { Identity + DepthwiseConv(3) + Identity }
          -> FC(6) -> Tanh -> FC(4) -> Softmax"""),
    "python_names": ("6x6x2", ("forward: Conv(3, 3) -> x: ReLU -> { training: Identity | "
                              "F: Conv(2, 1) } -> output: Flatten")),
    # Conv -> ReLU, which cnndsl's run plan fuses: plain, in a residual, in branches
    "conv_relu": ("8x8x3", """
        Conv(4, 3) -> ReLU -> { Identity + Conv(4, 3) -> ReLU -> Conv(4, 3) -> ReLU }
          -> { Conv(3, 3, stride=2) -> ReLU | MaxPool(2) -> Conv(2, 1) -> ReLU }
          -> BatchNorm -> DepthwiseConv(3) -> ReLU -> FC(5) -> Softmax"""),
    "conv_relu_1d": ("24x2", ("Conv(4, 3, stride=2) -> ReLU -> { Identity + Conv(4, 3) -> "
                             "ReLU } -> { Conv(2, 1) -> ReLU | AvgPool(3, 1, pad=1) } -> "
                             "ConvT(3, 2, stride=2) -> ReLU -> FC(3) -> Softmax")),
    "conv_relu_3d": ("6x7x8x2", ("Conv(4, 3, stride=2) -> ReLU -> { Identity + Conv(4, 3) "
                                "-> ReLU } -> SeparableConv(3, 3) -> ReLU -> Conv(2, 1) -> "
                                "ReLU")),
}
# and every layer kind's own examples (Op.examples), so a new kind is exported without
# an entry here
SMALL |= {
    f"op_{name}_{i + 1}": example
    for name in dict.fromkeys(OPS[key].name for key in user_op_names())
    for i, example in enumerate(OPS[name].examples)
}
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.cnn"))


def assert_exports_equal_forward(model, folder, scale: float = 1.0, shift: float = 0.0):
    """Export `model` to folder/m.onnx and folder/m.py (+ .pt), and check that ONNX Runtime
    and the generated PyTorch module compute what model.forward(x, train=False) does, within
    1e-4, at batch 1 and 3 (inputs scaled by `scale`, then moved by `shift`: negative ones
    show a max pool's padding)."""
    from cnndsl.export.onnx import to_onnx
    from cnndsl.export.pytorch import to_pytorch

    to_onnx(model, folder / "m.onnx")
    to_pytorch(model, folder / "m.py")
    for batch in (1, 3):
        x = inputs(model, batch, seed=batch) * scale + shift
        expected = model.forward(x, train=False)
        np.testing.assert_allclose(run_onnx(folder / "m.onnx", x), expected, atol=1e-4)
        np.testing.assert_allclose(run_pytorch(folder / "m.py", x)[0], expected, atol=1e-4)


def small_model(case: str):
    shape, body = SMALL[case]
    model = cnndsl.compile(f"network T_{case}\ninput {shape}\n{body.strip()}", seed=1)
    return prime(model)


def prime(model):
    """Non-trivial BatchNorm statistics (a few training forwards) and biases."""
    rng = np.random.default_rng(0)
    for name, array in model.parameters().items():
        if name.endswith(".bias"):
            array[...] = rng.uniform(-0.5, 0.5, array.shape)
    if model.buffers():
        big = model.input_shape[0] >= 200
        for _ in range(1 if big else 3):
            x = rng.normal(0.5, 2.0, (2 if big else 4, *model.input_shape))
            model.forward(x.astype(np.float32), train=True)
    return model


def inputs(model, batch, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *model.input_shape)).astype(
        np.float32)


def assert_matches(actual, expected, rel=1e-4):
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert np.abs(actual - expected).max() <= rel * max(scale, 1e-6), (
        f"max error {np.abs(actual - expected).max():.3g}, scale {scale:.3g}")


def run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def run_pytorch(path, x):
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(f"exported_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.load()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy(), net


def ends_in_softmax(model) -> bool:
    return model.graph.nodes[model.output_name]["op"] == "Softmax"


def cnndsl_logits(model, x):
    """What cnndsl trains on (`model.loss_and_grads`): the input of a final Softmax, else
    the output. Computed by a model of the same graph cut before that Softmax, with the
    same parameters and buffers."""
    if not ends_in_softmax(model):
        return model.forward(x, train=False)
    graph = model.graph.copy()
    graph.remove_node(model.output_name)
    graph.graph["output"] = model.logits_name
    cut = Model(graph, dtype=model.dtype)
    for kind in ("parameters", "buffers"):
        for name, array in getattr(cut, kind)().items():
            array[...] = getattr(model, kind)()[name]
    return cut.forward(x, train=False)


def assert_pytorch_matches(model, net, x):
    """forward == cnndsl's logits; predict_proba (only with a final Softmax) == cnndsl's
    forward."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        assert_matches(net(torch.from_numpy(x)).numpy(), cnndsl_logits(model, x))
        if ends_in_softmax(model):
            probabilities = net.predict_proba(torch.from_numpy(x)).numpy()
            assert_matches(probabilities, model.forward(x, train=False))
        else:
            assert not hasattr(net, "predict_proba")


def test_small_networks_cover_every_layer_kind():
    used = set()
    for shape, body in SMALL.values():
        graph = cnndsl.check_text(f"input {shape}\n{body.strip()}")
        used |= {node["op"] for _, node in graph.nodes(data=True)}
    canonical = {OPS[name].name for name in user_op_names()}
    assert canonical | {"Concat", "Add"} <= used


# ---- ONNX -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(SMALL))
def test_onnx_small(case, tmp_path):
    pytest.importorskip("onnxruntime")
    from cnndsl.export.onnx import to_onnx

    model = small_model(case)
    path = tmp_path / f"{case}.onnx"
    to_onnx(model, path)
    for batch in (1, 3):  # the batch axis is dynamic
        x = inputs(model, batch, seed=batch)
        assert_matches(run_onnx(path, x), model.forward(x, train=False))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_onnx_examples(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from cnndsl.export.onnx import to_onnx

    model = prime(cnndsl.load(str(EXAMPLES / name)))
    path = tmp_path / "net.onnx"
    to_onnx(model, path)
    x = inputs(model, 1 if model.input_shape[0] >= 200 else 2)
    assert_matches(run_onnx(path, x), model.forward(x, train=False))


def test_onnx_file_structure(tmp_path):
    onnx = pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx

    model = small_model("branches")
    path = tmp_path / "net.onnx"
    to_onnx(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    (graph_in,), (graph_out,) = proto.graph.input, proto.graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert graph_in.name == "input" and dims(graph_in) == ["batch", 8, 8, 3]
    assert graph_out.name == "output" and dims(graph_out) == ["batch", 4]
    assert proto.graph.node[0].op_type == "Transpose"
    names = {t.name for t in proto.graph.initializer}
    assert set(model.parameters()) | set(model.buffers()) == names
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "BatchNormalization", "Concat", "Sum", "Add", "Gemm", "Softmax"} <= ops
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert conv.name == "conv1" and list(conv.input) == ["input_nchw", "conv1.weight",
                                                         "conv1.bias"]


@pytest.mark.parametrize("case", ["branches", "conv1d", "conv3d", "conv_relu", "localconv",
                                  "softmax_spatial", "flatten_fc"])
def test_onnx_intermediate_shapes(case, tmp_path):
    """Every node output of the saved file has a value_info (or is the graph's output) with
    every axis known, and each layer's tensor has cnndsl's shape, channels-first, after a
    symbolic batch axis."""
    onnx = pytest.importorskip("onnx")
    from cnndsl.export import layers
    from cnndsl.export.onnx import to_onnx

    model = small_model(case)
    to_onnx(model, tmp_path / "net.onnx")
    onnx.checker.check_model(str(tmp_path / "net.onnx"), full_check=True)
    graph = onnx.load(str(tmp_path / "net.onnx")).graph
    shapes = {}
    for value in [*graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value
                              for d in dims if d.HasField("dim_param") or d.dim_value > 0]
        assert len(shapes[value.name]) == len(dims), value  # no unknown axis
        assert "batch" not in shapes[value.name][1:] and value.type.tensor_type.elem_type == 1
    outputs = [name for node in graph.node for name in node.output]
    assert [name for name in outputs if name not in shapes] == []
    checked = 0
    for layer in layers(model):
        if layer.name not in outputs:  # a pass-through, or the renamed output layer
            continue
        channels_first = (layer.shape[-1], *layer.shape[:-1])
        assert shapes[layer.name] == ["batch", *channels_first], layer.name
        checked += 1
    passing = {"Dropout", "Identity"}
    assert checked >= sum(layer.op not in passing for layer in layers(model)) - 1


def test_onnx_spatial_output_and_asymmetric_pads(tmp_path):
    onnx = pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx

    model = small_model("conv_same_stride2")
    to_onnx(model, tmp_path / "net.onnx")
    proto = onnx.load(str(tmp_path / "net.onnx"))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    pads = next(a for a in conv.attribute if a.name == "pads").ints
    assert list(pads) == [0, 0, 1, 1]
    assert proto.graph.node[-1].op_type == "Transpose"  # back to channels-last
    assert proto.graph.node[-1].output[0] == "output"


def test_onnx_bad_opset_is_an_error_and_writes_nothing(tmp_path):
    pytest.importorskip("onnx")
    from cnndsl.export.onnx import to_onnx

    model = small_model("global_avg")
    with pytest.raises(ExportError, match="opset 11") as error:
        to_onnx(model, tmp_path / "net.onnx", opset=11)
    assert isinstance(error.value, CnnDslError)
    assert list(tmp_path.iterdir()) == []


# ---- PyTorch ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(SMALL))
def test_pytorch_small(case, tmp_path):
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import to_pytorch

    model = small_model(case)
    path = tmp_path / f"{case}.py"
    to_pytorch(model, path)
    assert path.with_suffix(".pt").is_file()
    x = inputs(model, 3)
    _, net = run_pytorch(path, x)
    assert_pytorch_matches(model, net, x)
    # the saved state_dict is exactly the module's (strict load) and holds cnndsl's values
    saved = torch.load(path.with_suffix(".pt"), weights_only=True)
    assert set(saved) == set(net.state_dict())


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_pytorch_examples(name, tmp_path):
    pytest.importorskip("torch")
    from cnndsl.export.pytorch import to_pytorch

    model = prime(cnndsl.load(str(EXAMPLES / name)))
    path = tmp_path / "net.py"
    to_pytorch(model, path)
    x = inputs(model, 1 if model.input_shape[0] >= 200 else 2)
    _, net = run_pytorch(path, x)
    assert_pytorch_matches(model, net, x)
    assert sum(p.numel() for p in net.parameters()) == model.num_params


def test_pytorch_source_is_readable(tmp_path):
    pytest.importorskip("torch")
    from cnndsl.export.pytorch import module_source

    source = module_source(small_model("branches"))
    assert "class T_branches(nn.Module):" in source
    assert "self.conv1 = nn.Conv2d(3, 4, kernel_size=3, padding=1)" in source
    assert "torch.cat([" in source and "x.movedim(-1, 1)" in source
    assert "F.pad(x, [1, 2, 1, 2])" in source  # 4x4 'same': one before, two after
    same_s2 = module_source(small_model("conv_same_stride2"))
    assert "self.conv1(F.pad(x, [0, 1, 0, 1]))" in same_s2
    assert "return x.movedim(1, -1)" in same_s2
    assert "def predict_proba" not in same_s2
    assert "forward(x) returns the network's output, (N, 4, 4, 4)" in same_s2
    # ending in Softmax: forward returns the logits, predict_proba the probabilities
    assert source.count("LOGITS, (N, 4)") == 1 and "nn.CrossEntropyLoss" in source
    forward = source.split("def forward(self, x):")[1].split("def predict_proba")[0]
    assert "self.softmax1" not in forward
    assert "# logits (N, 4): the input of the final Softmax" in forward
    assert "self.softmax1 = nn.Softmax(dim=-1)" in source
    assert "return self.softmax1(self(x))" in source.split("def predict_proba(self, x):")[1]
    # a layer named like the method does not hide it
    clash = cnndsl.compile("input 4x4x2\npredict_proba: Conv(2, 1) -> FC(3) -> Softmax")
    assert "self.predict_proba_2 = nn.Conv2d(2, 2, kernel_size=1)" in module_source(clash)
    names = module_source(small_model("python_names"))
    for attribute in ("forward_2", "x_2", "training_2", "F_2", "output"):
        assert f"self.{attribute} = " in names


def test_state_dict_round_trip_is_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import load_pytorch_state, to_pytorch

    source = small_model("branches")
    to_pytorch(source, tmp_path / "net.py")
    target = cnndsl.compile(f"network T_branches\ninput {SMALL['branches'][0]}\n"
                            + SMALL["branches"][1].strip(), seed=7)
    load_pytorch_state(target, tmp_path / "net.pt")
    for kind in ("parameters", "buffers"):
        for (name, a), (other, b) in zip(getattr(source, kind)().items(),
                                         getattr(target, kind)().items()):
            assert name == other and a.dtype == b.dtype and a.tobytes() == b.tobytes()

    # the way back after training in PyTorch: one SGD step, then cnndsl agrees with torch
    _, net = run_pytorch(tmp_path / "net.py", inputs(source, 2))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.from_numpy(inputs(source, 8, seed=3))).square().sum()
    loss.backward()
    optimizer.step()
    net.eval()
    load_pytorch_state(target, net.state_dict())
    for name, array in itertools.chain(target.parameters().items(), target.buffers().items()):
        assert array.tobytes() == net.state_dict()[name].numpy().tobytes()
    x = inputs(source, 3, seed=4)
    with torch.no_grad():
        assert_matches(target.forward(x), net.predict_proba(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("case", ["branches", "conv_relu", "conv_relu_1d", "flatten_fc"])
def test_pytorch_cross_entropy_trains_what_cnndsl_trains(case, tmp_path):
    """The README's recipe: nn.CrossEntropyLoss on the module's forward. Its loss and
    gradients equal cnndsl's `loss_and_grads` on the same batch and weights (training mode:
    BatchNorm on batch statistics), before and after an SGD step taken in PyTorch and
    brought back with load_pytorch_state. `flatten_fc` has no final Softmax: its output is
    the logits in both."""
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import load_pytorch_state, to_pytorch

    model = small_model(case)
    to_pytorch(model, tmp_path / "net.py")
    _, net = run_pytorch(tmp_path / "net.py", inputs(model, 1))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    criterion = torch.nn.CrossEntropyLoss()
    classes = model.output_shape[0]
    for step in range(2):
        x = inputs(model, 6, seed=10 + step)
        labels = np.random.default_rng(step).integers(0, classes, 6)
        optimizer.zero_grad()
        logits = net(torch.from_numpy(x))
        loss = criterion(logits, torch.from_numpy(labels))
        loss.backward()
        expected, probabilities, grads = model.loss_and_grads(x, labels, train=True)
        assert_matches(np.array(loss.item()), np.array(expected))
        assert_matches(torch.softmax(logits.detach(), 1).numpy(), probabilities)
        for name, parameter in net.named_parameters():
            assert_matches(parameter.grad.numpy(), grads[name])
        optimizer.step()
        load_pytorch_state(model, net.state_dict())  # the weights after PyTorch's step


def test_load_pytorch_state_checks_names_and_shapes():
    torch = pytest.importorskip("torch")
    from cnndsl.export.pytorch import load_pytorch_state, state_dict

    model = small_model("python_names")
    good = state_dict(model)
    assert "forward_2.weight" in good and "F_2.bias" in good
    before = {k: v.copy() for k, v in model.parameters().items()}
    missing = {k: v for k, v in good.items() if k != "F_2.bias"}
    with pytest.raises(ExportError, match="no 'F_2.bias'.*Conv 'F'"):
        load_pytorch_state(model, missing)
    wrong = {**good, "forward_2.weight": torch.zeros(3, 2, 2, 2)}
    with pytest.raises(ExportError, match="'forward_2.weight' is 3x2x2x2 .* but 3x2x3x3"):
        load_pytorch_state(model, wrong)
    with pytest.raises(ExportError, match="'fc9.weight'"):
        load_pytorch_state(model, {**good, "fc9.weight": torch.zeros(1)})
    for name, array in model.parameters().items():  # nothing copied by a failed load
        assert np.array_equal(array, before[name])


def test_pytorch_path_must_not_be_the_weights(tmp_path):
    pytest.importorskip("torch")
    from cnndsl.export.pytorch import to_pytorch

    with pytest.raises(ExportError, match="weights go to a .pt file"):
        to_pytorch(small_model("global_avg"), tmp_path / "net.pt")
    assert list(tmp_path.iterdir()) == []
