"""Export a model to ONNX: `to_onnx(model, path, opset=17)`.

The graph takes "input" (batch, *input) channels-last as cnndsl does, transposes it to
NC(D)HW once, runs every layer in ONNX's channels-first layout, and transposes a spatial
result back before "output" (batch, *output). The batch axis is dynamic. Parameters and
BatchNorm statistics are initializers under cnndsl's names (`conv1.weight`,
`batchnorm1.running_mean`); weights need no conversion (cnndsl uses ONNX's layouts).
Every intermediate tensor has a value_info with its full shape (channels-first inside, the
batch axis named "batch"), from ONNX's own shape inference in strict mode, so viewers such
as Netron show the shapes.

Each layer's nodes are written by its op class (`onnx` hook, cnndsl/ops/*.py; shared
helpers in cnndsl.export.emit), in ONNX's channels-first layout (x is NC* inside the graph):
the Input's hook transposes "input", Conv becomes Conv, Dropout nothing, and so on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnndsl.export import ExportError, as_float32, layers
from cnndsl.ops import OPS

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
    builder = _Builder(model, opset)
    for layer in layers(model, with_input=True):  # the Input's hook makes "input" NC*
        inputs = [builder.values[i] for i in layer.inputs]
        builder.values[layer.name] = OPS[layer.op].onnx(builder, layer, inputs)
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
    """Collects nodes and initializers; `values` maps IR node name -> tensor name;
    `opset`: the ONNX opset being written (an emitter may choose its nodes by it)."""

    def __init__(self, model, opset: int):
        self.opset = opset
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


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("exporting to ONNX needs the 'onnx' package",
                          hint="pip install onnx (and onnxruntime to run the file)") from None
    return onnx
