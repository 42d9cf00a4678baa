"""The op registry: one class per layer kind, looked up by its DSL name.

Every pass (IR building, shapes, tables, diagrams, and later kernels) asks `OPS[name]`
instead of branching on op names. An op class holds, as staticmethods taking its Params
`p` first:

- `shape(p, *in_shapes) -> out_shape` (shapes in declared order: spatial..., channels;
  a flat tensor is `(features,)`); raises `ShapeMismatch`.
- `param_shapes(p, in_shape) -> {name: shape}` in PyTorch's layouts (docs/language.md),
  weight before bias; `buffer_shapes` likewise for non-trained state.
- `macs(p, in_shape, out_shape) -> int` as torchinfo counts them (conv and FC layers).
- `describe(p) -> str`: the arguments in short, for tables and diagrams.

and, to run (`cnndsl.model`; kernels are imported lazily so `check` never loads numba):

- `geometry(p, in_shapes)`: ints the kernels need (padding per side...), computed once;
  the run plan holds it read-only (a `Layer` record) and shares it between runners, so an
  op keeps work across steps in `ctx.work`, its layer's area in the runner running it.
- `init(p, in_shape, rng) -> {name: array}`: PyTorch's default initialisation;
  `init_buffers(p, in_shape)` likewise for buffers.
- `forward(p, geo, w, xs, ctx) -> (y, saved)`: `w` holds this layer's parameters and buffers
  by local name, `xs` its inputs (N, *shape) channels-last; returns what backward needs.
- `backward(p, geo, w, saved, dy, ctx) -> (dxs, grads)`: input gradients (a list, one per
  input) and parameter gradients by local name.

and, to export (cnndsl.export; helpers in cnndsl.export.emit, imported inside the hook so
`check` never loads them), classmethods taking a `cnndsl.export.Layer`:

- `onnx(b, layer, xs) -> str`: ONNX nodes added through the builder `b`, from the input
  tensors `xs` (channels-first inside the graph); returns the output tensor's name.
- `pytorch(layer, xs) -> (module or None, expression)`: the `nn.Module` for
  `self.<layer> = ...` and the forward() expression (SELF stands for that module) from the
  input variables `xs`. `pytorch_class` is the source of a helper module class the
  generated file needs (named as the op), `pytorch_counters` state_dict entries PyTorch
  keeps that cnndsl does not (set to 0 on export).

The base class raises a named ExportError for a kind without an emitter;
tests/test_registry.py checks that every registered kind has every hook.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from types import MappingProxyType

import numpy as np

from cnndsl.errors import ShapeMismatch

OPS: dict[str, type[Op]] = {}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Params of a layer that takes no arguments."""


@dataclass
class Ctx:
    """What a forward/backward call needs besides its arrays."""

    train: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    #: "numba" (cnndsl/kernels/*.py) or "reference" (their NumPy twins)
    backend: str = "numba"
    #: False while running the backward of a layer whose input gradient nobody needs
    #: (it reads the network's input): ops may then return None for dx and save work
    need_dx: bool = True
    #: when the batch is cut across threads, this call's cnndsl.parallel.Shard: ops that
    #: need the whole batch (batch statistics, random masks) go through it; else None
    shard: object = None
    #: the work area of the layer being run, its own in each runner: buffers an op keeps
    #: across steps for its backward (the runner sets it before each call; geometry,
    #: shared by every runner, is never written)
    work: dict = field(default_factory=dict)
    #: where the layer may write its output (N, *shape), or None: a plan's buffer in its
    #: arena (cnndsl.plan.run). An op that honours it returns this array itself; one that
    #: does not returns its own, which the runner copies there
    out: np.ndarray | None = None
    #: False on a forward whose state no backward will read (inference): an op may then
    #: skip what only its backward needs (a max pool's argmax)
    saves: bool = True

    def kernels(self, family: str):
        """The kernel module of a family ("conv", "pool", ...) for this backend."""
        module = _kernel_modules.get((self.backend, family))
        if module is None:  # imported on first use: `cnndsl check` never loads numba
            prefix = ("cnndsl.kernels." if self.backend == "numba"
                      else "cnndsl.kernels.reference.")
            module = _kernel_modules[self.backend, family] = import_module(prefix + family)
        return module


_kernel_modules: dict[tuple[str, str], object] = {}


def frozen_geometry(geometry):
    """An op's geometry() as a read-only mapping (None stays None)."""
    return None if geometry is None else MappingProxyType(dict(geometry))


def with_geometry(layer, **entries):
    """`layer` with `entries` added to its geometry (a run plan's fusions: "activation",
    "input_activation"); a layer without geometry gets one of just those."""
    from dataclasses import replace

    return replace(layer, geometry=frozen_geometry({**(layer.geometry or {}), **entries}))


def with_pool(producer, pool):
    """At inference: `producer` computing the pool layer `pool` of its output itself, or
    None when its op cannot (its `fusable_pools` must list the pool op's `pool_reduction`).
    Its geometry gains "pool" (the pool's kernel, stride, pad_before, pad_after) and, if
    the pool took a ReLU on its input, "activation"; its shape becomes the pool's. The run
    plans' conv -> ReLU -> max pool in one pass (no backward: the pool keeps no argmax)."""
    from dataclasses import replace

    reduction = getattr(pool.kind, "pool_reduction", None)
    if reduction is None or reduction not in getattr(producer.kind, "fusable_pools", ()):
        return None
    g = pool.geometry
    entries = {"pool": (g["kernel"], g["stride"], g["pad_before"], g["pad_after"])}
    activation = g.get("input_activation")
    if activation is not None:
        if "activation" in (producer.geometry or {}):
            return None
        entries["activation"] = activation
    return replace(with_geometry(producer, **entries), shape=pool.shape)


@dataclass(frozen=True)
class Layer:
    """One layer of a compiled network, as the runtime (cnndsl.model's run plan), the
    profiler and the exporters (cnndsl.export) see it. Shapes are cnndsl's (spatial..., C)
    or (F,); the network's Input is a Layer too where a walk needs it (no inputs, no
    weights)."""

    name: str
    op: str  # canonical registry name: Conv, MaxPool, Concat, ...
    params: object
    #: the op's geometry() ((D, H, W) int triples...), read-only; in a run plan it also
    #: names an activation the layer computes itself ("activation": "relu")
    geometry: Mapping | None
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]
    #: local name -> the model's array (parameters, then buffers)
    weights: dict = field(default_factory=dict, compare=False)
    #: in a run plan: the layer that computes this activation for it (this layer then
    #: passes its input through), else None
    fused_into: str | None = None

    @property
    def kind(self) -> type[Op]:
        """The layer's op class."""
        return OPS[self.op]

    @property
    def rank(self) -> int:
        """Spatial axes of the (first) input: 0 for a flat (N, F) tensor."""
        return len(self.in_shapes[0]) - 1 if self.in_shapes else len(self.shape) - 1

    def per_rank(self, key: str) -> tuple[int, ...]:
        """A geometry triple cut down to the input's spatial axes."""
        return tuple(self.geometry[key][3 - self.rank:])


def graph_layer(graph, name: str, weights: dict | None = None) -> Layer:
    """The Layer of IR node `name` (graph: the checked networkx graph), over `weights`."""
    node = graph.nodes[name]
    op = OPS[node["op"]]
    inputs = tuple(node.get("inputs", ()))
    in_shapes = tuple(tuple(graph.nodes[i]["shape"]) for i in inputs)
    return Layer(name, op.name, node["params"],
                 frozen_geometry(op.geometry(node["params"], in_shapes)), inputs, in_shapes,
                 tuple(node["shape"]), weights if weights is not None else {})


def uniform(shape, bound: float, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def kaiming_uniform(shapes: dict, rng: np.random.Generator, fan_in: int | None = None) -> dict:
    """PyTorch's default for conv and linear layers: kaiming_uniform(a=sqrt(5)) for the
    weight, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
    fan_in defaults to each weight's size over its first axis (PyTorch's rule); a bias
    takes the fan_in of the weight before it."""
    arrays, current = {}, 1
    for name, shape in shapes.items():
        if name != "bias":
            current = fan_in if fan_in is not None else math.prod(shape[1:])
        arrays[name] = uniform(shape, 1 / math.sqrt(current), rng)
    return arrays


class Op:
    name = "Op"
    aliases: tuple[str, ...] = ()
    Params = NoParams
    #: how many inputs: 1, or None for any number >= 2 (merges)
    arity: int | None = 1
    #: False for ops the IR inserts itself (Input, Concat, Add)
    user_callable = True
    #: `cnndsl check` says which defaults a bare use (`Conv`, no arguments) took
    explain_bare = False
    #: family, for diagram colours: conv, pool, dense, activation, norm, merge, io, shape
    family = "other"
    #: counted in a network's depth as papers quote it (conv and FC layers: VGG-16 = 16)
    weight_layer = False
    #: small networks using the layer, as (input shape, chain) pairs such as
    #: ("8x8x4", "Maxout(2)"): the shared tests run every kind's examples through shape
    #: checking, float64 gradchecks of the whole model, and the ONNX and PyTorch exports,
    #: so a new kind is covered there without editing any test table
    examples: tuple[tuple[str, str], ...] = ()
    #: the network's input (a graph source: nothing to compute, no parameters)
    is_input = False
    #: gives class probabilities: a network ending in it trains on its input, the logits
    gives_probabilities = False
    #: graphviz attributes of this kind's node beyond its family's fill colour
    diagram_style: tuple[tuple[str, str], ...] = ()
    #: the diagram names the layer (`conv1`) under its label
    diagram_names_layer = True
    #: what this kind's backward reads, for the memory plan (cnndsl.plan): a tuple of
    #: "input", "output", "indices" (an int32 array of the output's size); None: the
    #: default of its role (weighted layers their input, activations their output, pools
    #: an argmax)
    plan_saves: tuple[str, ...] | None = None

    @staticmethod
    def shape(p, *in_shapes):
        raise NotImplementedError

    @staticmethod
    def param_shapes(p, in_shape) -> dict[str, tuple[int, ...]]:
        return {}

    @staticmethod
    def buffer_shapes(p, in_shape) -> dict[str, tuple[int, ...]]:
        return {}

    @staticmethod
    def macs(p, in_shape, out_shape) -> int:
        return 0

    @staticmethod
    def describe(p) -> str:
        return ""

    @classmethod
    def diagram_label(cls, p) -> str:
        """The diagram's label, `Conv 32 3x3/2`: the kind and its arguments in short."""
        return f"{cls.name} {cls.describe(p).replace(', ', ' ')}".strip()

    @classmethod
    def table_text(cls, p) -> str:
        """The tables' op column, `Conv(32, 3x3/2)`: arguments as resolved."""
        args = cls.describe(p)
        return f"{cls.name}({args})" if args else cls.name

    @staticmethod
    def window(p, in_shapes):
        """How the layer reads its input in space (cnndsl.ops.padding.Window), for
        receptive fields; None: pointwise (each output position reads the same input
        position, or the input has no spatial axes)."""
        return

    @staticmethod
    def geometry(p, in_shapes):
        return None

    @classmethod
    def init(cls, p, in_shape, rng) -> dict:
        """PyTorch's default: kaiming-uniform weights and biases (nothing without params)."""
        return kaiming_uniform(cls.param_shapes(p, in_shape), rng)

    @staticmethod
    def init_buffers(p, in_shape) -> dict:
        return {}

    @classmethod
    def forward(cls, p, geo, w, xs, ctx):
        raise NotImplementedError(f"{cls.name}: no forward")

    @classmethod
    def backward(cls, p, geo, w, saved, dy, ctx):
        raise NotImplementedError(f"{cls.name}: no backward")

    #: source of a helper nn.Module class (named as the op) the PyTorch export needs
    pytorch_class = ""
    #: state_dict entries PyTorch's module keeps and cnndsl does not (exported as 0)
    pytorch_counters: tuple[str, ...] = ()

    @classmethod
    def onnx(cls, b, layer, xs) -> str:
        """This layer as ONNX nodes (see the module docstring); a kind without raises."""
        from cnndsl.export.emit import no_emitter

        raise no_emitter(cls.name, "ONNX")

    @classmethod
    def pytorch(cls, layer, xs) -> tuple[str | None, str]:
        """This layer as a PyTorch module and forward expression (see the module docstring);
        a kind without raises."""
        from cnndsl.export.emit import no_emitter

        raise no_emitter(cls.name, "PyTorch")


def register(cls: type[Op]) -> type[Op]:
    for key in (cls.name, *cls.aliases):
        assert key not in OPS, f"op {key} registered twice"
        OPS[key] = cls
    return cls


def user_op_names() -> list[str]:
    return [name for name, cls in OPS.items() if cls.user_callable]


def num_elements(shape) -> int:
    return math.prod(shape)


def at_most_3d(shape) -> None:
    """A flat, 1-D, 2-D or 3-D shape passes; more spatial axes are an error."""
    if len(shape) > 4:
        raise ShapeMismatch(f"supports 1-D, 2-D and 3-D inputs, got {len(shape) - 1}-D")


def spatial(shape, op_name: str, what: str = "a spatial input") -> tuple[tuple[int, ...], int]:
    """Split (spatial..., C) into (spatial, C); flat or >3-D inputs are errors."""
    if len(shape) < 2:
        raise ShapeMismatch(
            f"needs {what} (L x C, H x W x C or D x H x W x C), got a flat tensor of "
            f"{shape[0]} features",
            hint=f"{op_name} cannot follow FC, Flatten or a global pool")
    at_most_3d(shape)
    return shape[:-1], shape[-1]


def same_size(value, other) -> bool:
    """3 == (3, 3): a size written once means that size on every axis."""
    if isinstance(value, tuple) and not isinstance(other, tuple):
        return all(v == other for v in value)
    if isinstance(other, tuple) and not isinstance(value, tuple):
        return all(v == value for v in other)
    return value == other


def fmt_stride(value) -> str:
    """A stride the same on every axis is shown once: /2, not /2x2."""
    if isinstance(value, tuple) and len(set(value)) == 1:
        return str(value[0])
    return fmt_size(value)


def fmt_size(value) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _import_op_modules() -> None:
    """Import every module of this package (in name order, so the registry's order is
    fixed), so that registration happens on `import cnndsl.ops`: a new layer kind's module
    needs no line anywhere else."""
    import pkgutil

    for module in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        import_module(f"{__name__}.{module.name}")


_import_op_modules()
