"""A network's compiled graph as plain data, stored in weights files and compared on load.

Weights only make sense with the graph they were trained in: the same layers, in the same
order, with the same resolved arguments, wired the same way. Parameter names and shapes
alone do not say that (swap `ReLU` for `Tanh` and every weight still fits), so a weights file
stores `describe(graph)` and `first_difference` names the first place where another graph
differs. It is built from the checked IR, never from the text: a changed comment, a renamed
`let` or `pad=same` written as `pad=1` where that resolves to the same padding give the same
description.
"""

from __future__ import annotations

import dataclasses
import math

import networkx as nx

from cnndsl.ops import OPS

#: bumped when the description changes meaning; files with another version are compared by
#: recompiling their stored text instead
VERSION = 1

#: argument names whose resolved value is in the op's geometry (padding per side, stride
#: per axis...) or in its parameter shapes: compared there, so `MaxPool(2)` and
#: `MaxPool(2, 2)`, or `pad=same` and the number it resolves to, are the same layer
RESOLVED_ARGUMENTS = ("kernel", "stride", "pad", "dilation", "output_pad", "size")


def describe(graph: nx.DiGraph) -> list[dict]:
    """One JSON-ready record per layer, in the graph's (source) order."""
    layers = []
    for name, node in graph.nodes(data=True):
        in_shapes = [tuple(graph.nodes[i]["shape"]) for i in node["inputs"]]
        geometry = OPS[node["op"]].geometry(node["params"], in_shapes) if in_shapes else None
        arguments = {}
        if dataclasses.is_dataclass(node["params"]):
            for field in dataclasses.fields(node["params"]):
                if geometry is not None and field.name in RESOLVED_ARGUMENTS:
                    continue
                arguments[field.name] = _plain(getattr(node["params"], field.name))
        layers.append({
            "name": name,
            "op": node["op"],
            "arguments": arguments,
            "geometry": _plain(geometry),
            "inputs": list(node["inputs"]),
            "shape": list(node["shape"]),
            "params": {k: list(v) for k, v in node.get("param_shapes", {}).items()},
        })
    return layers


def first_difference(stored: list[dict], here: list[dict], there: str) -> str | None:
    """None when the two descriptions are the same graph, else the first difference in
    words: `relu1 is ReLU in W.npz but Tanh here`. `there` names the stored side."""
    for index, (old, new) in enumerate(zip(stored, here)):
        name = old["name"]
        renamed = "" if new["name"] == name else f", where it is named {new['name']}"
        if old["op"] != new["op"]:
            return f"{name} is {old['op']} in {there} but {new['op']} here{renamed}"
        defaults = _defaults(new["op"])
        for key in sorted(set(old["arguments"]) | set(new["arguments"])):
            # an argument the op gained since the file was written (Conv's flip) was
            # its default then
            a = old["arguments"].get(key, defaults.get(key))
            b = new["arguments"].get(key, defaults.get(key))
            if a != b:
                return (f"{name} ({old['op']}) has {key}={_show(a)} in {there} but "
                        f"{key}={_show(b)} here{renamed}")
        if old["geometry"] != new["geometry"]:
            key = _first_key(old["geometry"], new["geometry"])
            a, b = _get(old["geometry"], key), _get(new["geometry"], key)
            return (f"{name} ({old['op']}) resolves to {key} {_show(a)} in {there} but "
                    f"{_show(b)} here{renamed}")
        if old["params"] != new["params"]:
            key = _first_key(old["params"], new["params"])
            return (f"{name}.{key} is {_shape(old['params'].get(key))} in {there} but "
                    f"{_shape(new['params'].get(key))} here{renamed}")
        if old["shape"] != new["shape"]:
            return (f"{name} ({old['op']}) outputs {_shape(old['shape'])} in {there} but "
                    f"{_shape(new['shape'])} here{renamed}")
        old_inputs = [_position(stored, i) for i in old["inputs"]]
        new_inputs = [_position(here, i) for i in new["inputs"]]
        if old_inputs != new_inputs:
            return (f"{name} takes {', '.join(old['inputs']) or 'nothing'} in {there} but "
                    f"{', '.join(new['inputs']) or 'nothing'} here")
        if renamed:
            return (f"layer {index + 1} ({old['op']}) is named {name} in {there} but "
                    f"{new['name']} here (labels name the parameters)")
    if len(stored) != len(here):
        longer, where = (stored, there) if len(stored) > len(here) else (here, "here")
        extra = longer[min(len(stored), len(here))]
        return (f"{there} has {_layers(len(stored))}, this network {_layers(len(here))}; the "
                f"first extra one is {extra['name']} ({extra['op']}) {where}")
    return None


def _defaults(op: str) -> dict:
    """An op's argument defaults, JSON-ready (arguments with no default left out)."""
    params = OPS[op].Params if op in OPS else None
    if params is None or not dataclasses.is_dataclass(params):
        return {}
    return {f.name: _plain(f.default) for f in dataclasses.fields(params)
            if f.default is not dataclasses.MISSING}


def _plain(value):
    """Tuples -> lists, numpy scalars -> Python, NaN kept comparable: JSON-ready values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _first_key(a, b) -> str:
    a, b = a or {}, b or {}
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            return key
    return ""


def _get(mapping, key):
    return (mapping or {}).get(key)


def _position(layers: list[dict], name: str) -> int:
    for index, layer in enumerate(layers):
        if layer["name"] == name:
            return index
    return -1


def _show(value) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value) if value else "()"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _shape(shape) -> str:
    if shape is None:
        return "absent"
    return "x".join(str(s) for s in shape) if shape else "a scalar"


def _layers(n: int) -> str:
    return f"{n} layer" + ("" if n == 1 else "s")
