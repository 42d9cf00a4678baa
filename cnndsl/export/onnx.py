"""Export a model to ONNX: `to_onnx(model, path, opset=17)`.

The graph takes "input" (batch, *input) channels-last as cnndsl does, transposes it to
NC(D)HW once, runs every layer in ONNX's channels-first layout, and transposes a spatial
result back before "output" (batch, *output). The batch axis is dynamic. Parameters and
BatchNorm statistics are initializers under cnndsl's names (`conv1.weight`,
`batchnorm1.running_mean`); weights need no conversion (cnndsl uses ONNX's layouts).
Every intermediate tensor has a value_info with its full shape (channels-first inside, the
batch axis named "batch"), from ONNX's own shape inference in strict mode, so viewers such
as Netron show the shapes.

Layer -> ONNX (x is NC* inside the graph):
    Conv, DepthwiseConv      Conv (pads = before + after, so 'same' may be asymmetric)
    SeparableConv            Conv(group=C) -> Conv 1x1
    ConvT                    ConvTranspose (pads, output_padding)
    LocalConv                Conv with one-hot kernels (patches) -> Reshape -> Einsum
                             with the unshared weights -> Reshape -> Add bias
    MaxPool / AvgPool        MaxPool / AveragePool(count_include_pad=1)
    L2Pool                   LpPool(p=2)
    GlobalAvg/MaxPool        GlobalAveragePool / GlobalMaxPool -> Flatten
    Flatten, FC              Flatten(axis=1) (channel-major), Gemm(transB=1)
    BatchNorm                BatchNormalization (inference: running statistics)
    Softmax                  Softmax(axis=1): over channels
    Dropout, Identity        nothing (the tensor is passed on)
    { | }, { + }             Concat(axis=1), Add / Sum
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from cnndsl.export import ExportError, Layer, as_float32, layers

MIN_OPSET = 13  # Softmax over one axis (before 13 it flattened the trailing axes)


#: protobuf cannot hold a message over 2 GiB: larger weights go to a file beside the model
EXTERNAL_DATA_BYTES = 1 << 30


def to_onnx(model, path, opset: int = 17) -> None:
    """Write `model` as an ONNX file at `path`, checked by onnx.checker first.

    Weights over EXTERNAL_DATA_BYTES go to `path.data` beside it (ONNX external data;
    ONNX Runtime and Netron read it from there). The files are written in a temporary folder
    beside `path` and moved into place once complete and checked, so a failure (an
    ExportError, a checker error, a full disk) never leaves a file at `path`."""
    import shutil
    import tempfile

    onnx = _import_onnx()
    proto = build_onnx(model, opset)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    external = sum(a.nbytes for a in model.parameters().values()) + \
        sum(a.nbytes for a in model.buffers().values()) > EXTERNAL_DATA_BYTES
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = folder / target.name
        if external:
            onnx.save_model(proto, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{target.name}.data",
                            size_threshold=0)
            onnx.checker.check_model(str(staged), full_check=True)  # reads the data file
        else:
            data = proto.SerializeToString()
            onnx.checker.check_model(data, full_check=True)  # raises: nothing is written
            with open(staged, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if external:
            os.replace(folder / f"{target.name}.data", target.with_name(f"{target.name}.data"))
        os.replace(staged, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_onnx(model, opset: int = 17):
    """The onnx.ModelProto of `model`, shapes inferred (strict: an operator ONNX cannot
    infer raises), not yet checked."""
    onnx = _import_onnx()
    from onnx import helper

    latest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= latest:
        raise ExportError(f"ONNX opset {opset} is not supported",
                          hint=f"use an opset from {MIN_OPSET} to {latest} (default 17)")
    builder = _Builder(model)
    rank = len(model.input_shape) - 1
    current = "input"
    if rank:
        current = builder.node("Transpose", ["input"], "input_nchw", name="to_channels_first",
                               perm=[0, rank + 1, *range(1, rank + 1)])
    builder.values[model.input_name] = current
    for layer in layers(model):
        emit = _EMIT.get(layer.op)
        if emit is None:
            raise ExportError(f"{layer.op} '{layer.name}' has no ONNX export")
        inputs = [builder.values[i] for i in layer.inputs]
        builder.values[layer.name] = emit(builder, layer, inputs)
    builder.finish(builder.values[model.output_name], len(model.output_shape) - 1)

    def value(name, shape):
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", *shape])

    inputs = [value("input", model.input_shape)]
    outputs = [value("output", model.output_shape)]
    graph = helper.make_graph(builder.nodes, model.name, inputs, outputs,
                              initializer=builder.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cnndsl",
                              doc_string=f"{model.name}: input (batch, "
                              f"{', '.join(map(str, model.input_shape))}) channels-last")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(proto, {"layout": "channels-last (N, *input), as cnndsl"})
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


class _Builder:
    """Collects nodes and initializers; `values` maps IR node name -> tensor name."""

    def __init__(self, model):
        self.nodes, self.initializers = [], []
        self.values: dict[str, str] = {}
        self.producers: dict[str, object] = {}
        self.taken = {"input", "output", *model.parameters(), *model.buffers()}

    def fresh(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.taken:
            i += 1
            candidate = f"{name}_{i}"
        self.taken.add(candidate)
        return candidate

    def node(self, op: str, inputs, output: str, name: str | None = None, **attributes) -> str:
        from onnx import helper

        output = self.fresh(output)
        node = helper.make_node(op, list(inputs), [output], name=name or output, **attributes)
        self.nodes.append(node)
        self.producers[output] = node
        return output

    def weight(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.taken.add(name)
        self.initializers.append(numpy_helper.from_array(as_float32(array), name))
        return name

    def constant(self, name: str, array) -> str:
        """An int64 initializer (Reshape shapes)."""
        from onnx import numpy_helper

        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.int64), name))
        return name

    def finish(self, last: str, rank: int) -> None:
        self.taken.discard("output")  # reserved for this last node
        if rank:
            self.node("Transpose", [last], "output", name="to_channels_last",
                      perm=[0, *range(2, rank + 2), 1])
            return
        readers = [n for n in self.nodes if last in n.input]
        if last in self.producers and not readers:
            self.producers[last].output[0] = "output"  # rename rather than copy
        else:
            self.node("Identity", [last], "output")


def _params(builder: _Builder, layer: Layer, *names) -> list[str]:
    """Initializer names of the layer's weights that exist, in the order given."""
    return [builder.weight(f"{layer.name}.{n}", layer.weights[n]) for n in names
            if n in layer.weights]


def _window(layer: Layer, dilation: bool = False) -> dict:
    attributes = {"kernel_shape": list(layer.per_rank("kernel")),
                  "strides": list(layer.per_rank("stride")),
                  "pads": [*layer.per_rank("pad_before"), *layer.per_rank("pad_after")]}
    if dilation:
        attributes["dilations"] = list(layer.per_rank("dilation"))
    return attributes


def _conv(b, layer, xs):
    return b.node("Conv", [xs[0], *_params(b, layer, "weight", "bias")], layer.name,
                  group=layer.params.groups, **_window(layer, dilation=True))


def _depthwise(b, layer, xs):
    return b.node("Conv", [xs[0], *_params(b, layer, "weight", "bias")], layer.name,
                  group=layer.in_shapes[0][-1], **_window(layer))


def _separable(b, layer, xs):
    depthwise, pointwise, *bias = _params(b, layer, "depthwise", "pointwise", "bias")
    mid = b.node("Conv", [xs[0], depthwise], f"{layer.name}/depthwise",
                 group=layer.in_shapes[0][-1], **_window(layer))
    return b.node("Conv", [mid, pointwise, *bias], layer.name,
                  kernel_shape=[1] * layer.rank)


def _conv_t(b, layer, xs):
    kernel = layer.weights["weight"].shape[2:]
    pad = list(layer.per_rank("pad"))
    return b.node("ConvTranspose", [xs[0], *_params(b, layer, "weight", "bias")], layer.name,
                  kernel_shape=list(kernel), strides=list(layer.per_rank("stride")),
                  pads=pad + pad, output_padding=list(layer.per_rank("output_pad")))


def _local(b, layer, xs):
    """y[n, f, o] = sum_{c,k} w[o, f, c, k] x[n, c, o*s + k] + b[f, o], as a composition:
    a grouped Conv with one-hot kernels gathers the patches (exact: one product by 1 per
    output), then one Einsum applies a weight per output position."""
    w = layer.weights["weight"]  # (*out, F, C, *kernel)
    rank = layer.rank
    out, filters, channels, kernel = (w.shape[:rank], w.shape[rank], w.shape[rank + 1],
                                      w.shape[rank + 2:])
    taps, positions = math.prod(kernel), math.prod(out)
    onehot = np.zeros((channels * taps, 1, *kernel), np.float32)
    for c in range(channels):
        for t in range(taps):
            onehot[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1.0
    gather = b.weight(b.fresh(f"{layer.name}/patch_kernel"), onehot)
    patches = b.node("Conv", [xs[0], gather], f"{layer.name}/patches", group=channels,
                     kernel_shape=list(kernel), strides=list(layer.per_rank("stride")))
    flat = b.node("Reshape", [patches, b.constant(f"{layer.name}/patches_shape",
                                                  [0, channels * taps, positions])],
                  f"{layer.name}/patches_flat")
    weight = b.node("Reshape", [*_params(b, layer, "weight"), b.constant(
        f"{layer.name}/weight_shape", [positions, filters, channels * taps])],
        f"{layer.name}/weight_flat")
    y = b.node("Einsum", [flat, weight], f"{layer.name}/matmul", equation="nkp,pfk->nfp")
    y = b.node("Reshape", [y, b.constant(f"{layer.name}/shape", [0, filters, *out])],
               layer.name if "bias" not in layer.weights else f"{layer.name}/nobias")
    if "bias" in layer.weights:  # (F, *out) broadcasts over the batch
        y = b.node("Add", [y, *_params(b, layer, "bias")], layer.name)
    return y


def _pool(onnx_op, **extra):
    def emit(b, layer, xs):
        return b.node(onnx_op, [xs[0]], layer.name, **_window(layer), **extra)

    return emit


def _global(onnx_op):
    def emit(b, layer, xs):
        pooled = b.node(onnx_op, [xs[0]], f"{layer.name}/pool")
        return b.node("Flatten", [pooled], layer.name, axis=1)

    return emit


def _flatten(b, layer, xs):
    return b.node("Flatten", [xs[0]], layer.name, axis=1) if layer.rank else xs[0]


def _fc(b, layer, xs):
    x = b.node("Flatten", [xs[0]], f"{layer.name}/flatten", axis=1) if layer.rank else xs[0]
    return b.node("Gemm", [x, *_params(b, layer, "weight", "bias")], layer.name, transB=1)


def _simple(onnx_op, **attributes):
    def emit(b, layer, xs):
        values = {k: (v(layer) if callable(v) else v) for k, v in attributes.items()}
        return b.node(onnx_op, xs, layer.name, **values)

    return emit


def _batchnorm(b, layer, xs):
    names = _params(b, layer, "weight", "bias", "running_mean", "running_var")
    return b.node("BatchNormalization", [xs[0], *names], layer.name,
                  epsilon=float(layer.params.eps))


def _add(b, layer, xs):
    return b.node("Add" if len(xs) == 2 else "Sum", xs, layer.name)


def _passthrough(b, layer, xs):
    return xs[0]


_EMIT = {
    "Conv": _conv, "DepthwiseConv": _depthwise, "SeparableConv": _separable,
    "ConvT": _conv_t, "LocalConv": _local,
    "MaxPool": _pool("MaxPool"), "AvgPool": _pool("AveragePool", count_include_pad=1),
    "L2Pool": _pool("LpPool", p=2),
    "GlobalAvgPool": _global("GlobalAveragePool"), "GlobalMaxPool": _global("GlobalMaxPool"),
    "Flatten": _flatten, "FC": _fc,
    "ReLU": _simple("Relu"), "LeakyReLU": _simple("LeakyRelu", alpha=lambda ly: ly.params.alpha),
    "Sigmoid": _simple("Sigmoid"), "Tanh": _simple("Tanh"), "Softmax": _simple("Softmax", axis=1),
    "BatchNorm": _batchnorm, "Dropout": _passthrough, "Identity": _passthrough,
    "Concat": _simple("Concat", axis=1), "Add": _add,
}


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("exporting to ONNX needs the 'onnx' package",
                          hint="pip install onnx (and onnxruntime to run the file)") from None
    return onnx
