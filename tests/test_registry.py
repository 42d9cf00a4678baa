"""The op registry (cnndsl.ops): every layer kind carries its whole story in its op class
(shape rule, parameters, init, forward, backward, label, window, ONNX and PyTorch emitters),
and the exporters know no layer kind by name, so a kind without an emitter is a named
ExportError, never a KeyError reaching users as an internal error."""

import inspect

import numpy as np
import pytest

import cnndsl
from cnndsl.export import ExportError, Layer, layers
from cnndsl.ops import OPS, Op

#: hooks every kind has (the base class's defaults count: no parameters, pointwise, ...)
HOOKS = ("shape", "param_shapes", "buffer_shapes", "macs", "describe", "window", "geometry",
         "init", "init_buffers", "forward", "backward", "onnx", "pytorch")
#: hooks the base class cannot supply: each kind must define its own
OWN_HOOKS = ("shape", "forward", "backward", "onnx", "pytorch")
#: the runtime feeds the network's input in; it never runs an Input as a layer
NOT_RUN = {"Input": {"forward", "backward"}}

KINDS = sorted({cls.name: cls for cls in OPS.values()}.items())


def defines(cls, hook: str) -> bool:
    """Whether `cls` or a class between it and Op defines `hook` itself."""
    return any(hook in vars(klass) for klass in cls.__mro__ if klass is not Op
               and issubclass(klass, Op))


@pytest.mark.parametrize("name,cls", KINDS, ids=[name for name, _ in KINDS])
def test_every_kind_has_every_hook(name, cls):
    for hook in HOOKS:
        assert callable(getattr(cls, hook, None)), f"{name} has no {hook}"
    for hook in OWN_HOOKS:
        if hook in NOT_RUN.get(name, ()):
            continue
        assert defines(cls, hook), f"{name} does not define its own {hook}"
    assert isinstance(cls.pytorch_class, str) and isinstance(cls.pytorch_counters, tuple)
    if cls.pytorch_class:  # a helper module is named as its op, which the export reserves
        assert cls.pytorch_class.startswith(f"class {cls.name}(nn.Module):")


def test_the_exporters_know_no_layer_kind_by_name():
    """No op-name table (`"MaxPool": ...`) and no `op == "Conv"` branch in the exporters."""
    from cnndsl.export import onnx, pytorch

    for module in (onnx, pytorch):
        source = inspect.getsource(module)
        for name in OPS:
            assert f'"{name}":' not in source, f"{module.__name__} has a table entry {name}"
            if name != "Softmax":  # pytorch: forward() stops before a final Softmax
                assert f'== "{name}"' not in source, f"{module.__name__} branches on {name}"


def test_a_kind_without_emitters_is_a_named_export_error():
    class Bare(Op):
        name = "Bare"

    layer = Layer("bare1", "Bare", None, None, ("input",), ((4, 3),), (4, 3), {})
    with pytest.raises(ExportError, match="the layer kind Bare has no ONNX emitter"):
        Bare.onnx(None, layer, ["x"])
    with pytest.raises(ExportError, match="the layer kind Bare has no PyTorch emitter"):
        Bare.pytorch(layer, ["x"])


def test_export_of_a_kind_without_emitter_names_it(monkeypatch):
    """Through the exporters: the ExportError a user sees (exit status 1), not a KeyError."""
    pytest.importorskip("onnx")
    from cnndsl.export.onnx import build_onnx
    from cnndsl.export.pytorch import module_source

    model = cnndsl.compile("network T\ninput 4x4x2\nConv(2, 3) -> Tanh", seed=0)
    tanh = OPS["Tanh"]
    monkeypatch.setattr(tanh, "onnx", classmethod(Op.onnx.__func__))
    monkeypatch.setattr(tanh, "pytorch", classmethod(Op.pytorch.__func__))
    with pytest.raises(ExportError, match="the layer kind Tanh has no ONNX emitter"):
        build_onnx(model)
    with pytest.raises(ExportError, match="the layer kind Tanh has no PyTorch emitter"):
        module_source(model)


def test_the_walk_includes_the_input_only_when_asked():
    model = cnndsl.compile("network T\ninput 4x4x2\nConv(2, 3) -> ReLU", seed=0)
    walk = layers(model, with_input=True)
    assert [layer.op for layer in walk] == ["Input", "Conv", "ReLU"]
    assert walk[0].name == model.input_name and walk[0].inputs == () and walk[0].rank == 2
    assert [layer.op for layer in layers(model)] == ["Conv", "ReLU"]


def test_the_run_plan_is_typed_and_its_geometry_read_only():
    """model.layers holds Layer records; a training step writes no geometry (a Conv keeps
    its patches in its runner's work area), and each runner has its own work areas."""
    model = cnndsl.compile("network T\ninput 6x6x2\nConv(3, 3) -> ReLU -> FC(2)", seed=0)
    conv, relu, fc = model.layers
    assert all(isinstance(layer, Layer) for layer in model.layers)
    assert (conv.op, relu.op, fc.op) == ("Conv", "ReLU", "FC")
    assert conv.geometry["activation"] == "relu" and relu.fused_into == conv.name
    assert conv.weights["weight"] is model.parameters()["conv1.weight"]
    with pytest.raises(TypeError):
        conv.geometry["keep"] = {}
    before = dict(conv.geometry)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
    model.loss_and_grads(x, np.array([0, 1]))
    assert dict(conv.geometry) == before
    twin = model.sandbox()
    mine, theirs = model._runners[0].steps[0][2], twin._runners[0].steps[0][2]
    assert mine is not theirs and "cols" in mine and not theirs
