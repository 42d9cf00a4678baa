"""AST -> IR: a networkx DiGraph (`Network`) with one node per layer.

Repetitions and macro calls are expanded; each node remembers where it came from.
Node ids are the layers' unique names (labels, or generated `conv1`, `relu2`, ...);
insertion order is topological and follows the source (branches left to right).

Node attributes:
    op       registry name (`Conv`, `MaxPool`, `Concat`, ...); `written` is the name in the
             source (`Pool`, `Dense`)
    params   the op's frozen Params dataclass, arguments evaluated
    inputs   list of input node names, in order (branch order for merges)
    span     source span of the layer call (of the braces, for merges)
    label    the user's label or None
    scopes   tuple of Scope, outermost first: the repetitions and macro calls around it
Graph attributes: name, input_shape, bindings (final values), output (last node).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from cnndsl import ast
from cnndsl.errors import (
    ArgumentError,
    BindingError,
    CnnDslError,
    GraphError,
    Span,
    UnknownOpError,
    did_you_mean,
)
from cnndsl.evaluate import RESERVED, Env, check_number, evaluate, show
from cnndsl.ops import OPS, user_op_names
from cnndsl.ops.args import MAX_WHOLE, BindError, bind
from cnndsl.ops.structure import InputParams
from cnndsl.parser import end_of_text

MAX_LAYERS = 100_000
RESERVED_LABEL_PREFIX = "__"  # render's own nodes (__output__, __error__) and future ones


class Network(nx.DiGraph):
    """The IR graph: a networkx DiGraph (everything above holds) that a notebook shows as
    its diagram and layer table (cnndsl.display; nothing is written to disk)."""

    def _repr_svg_(self) -> str | None:
        from cnndsl.display import svg

        return svg(self)

    def _repr_html_(self) -> str:
        from cnndsl.display import html

        return html(self)


@dataclass(frozen=True)
class Scope:
    """One repetition or macro call around a node.

    `id` is unique per expansion (`rep3`, `call2`); `index` is the iteration (0-based)
    within a repetition of `count`; `span` is where the repetition or call is written.
    """

    id: str
    kind: str  # "repeat" | "macro"
    label: str  # "x3" or "block(64)"
    index: int
    count: int
    span: Span


@dataclass
class _Statements:
    network: ast.NetworkStmt | None = None
    input: ast.InputStmt | None = None
    body: ast.BodyStmt | None = None


def build_ir(program: ast.Program, bindings: dict | None = None,
             text: str | None = None, data: dict | None = None) -> Network:
    """Expand `program` into the layer graph. `bindings` override `let` (and may add names);
    `data` binds names from the data (`{"classes": 10}`) where neither a `let` nor
    `bindings` does; `text`, the source, lets file-level errors point at its end."""
    return _Builder(program, dict(bindings or {}), text, dict(data or {})).build()


def _keyword_value(op, layer: str, argument: ast.Arg, env: Env):
    """A keyword argument's value. An unbound word given to an argument that chooses from
    words (mode=bicubic) is refused with the choices, not as an unknown name."""
    try:
        return evaluate(argument.value, env)
    except BindingError:
        kind = _argument_kind(op, argument.name)
        choices = getattr(kind, "choices", ())
        if not choices or not isinstance(argument.value, ast.Name):
            raise
        raise ArgumentError(
            f"{layer}: {argument.name} must be {kind.text}, got {argument.value.id}",
            argument.value.span, hint=did_you_mean(argument.value.id, list(choices))
            or f"write {argument.name}={choices[0]}") from None


def _argument_kind(op, argument: str):
    """The kind (cnndsl.ops.args) of `op`'s argument named `argument`, or None."""
    import dataclasses

    if not dataclasses.is_dataclass(op.Params):
        return None
    for field in dataclasses.fields(op.Params):
        if field.name == argument:
            return field.metadata.get("kind")
    return None


class _Builder:
    def __init__(self, program: ast.Program, overrides: dict, text: str | None,
                 data: dict | None = None):
        self.program = program
        self.text = text
        self.overrides = overrides
        self.data = data or {}
        self.defs: dict[str, ast.DefStmt] = {}
        self.nodes: list[tuple[int, dict]] = []
        self.counters = {"repeat": 0, "macro": 0}
        self.macro_stack: list[str] = []
        self.globals: dict = {}
        self.bound: dict = {}  # (call, argument values) -> params

    # ---- statements ------------------------------------------------------------
    def build(self) -> Network:
        statements = self._collect()
        for definition in self.defs.values():
            self._check_layer_names(definition.body)  # also in macros never called
        env = self._bind_lets()
        if statements.body is None:
            span = end_of_text(self.text) if self.text is not None else Span.at(1, 1)
            raise GraphError("the file has no network: no chain of layers was found", span,
                             hint="write the layers as one chain, e.g. "
                                  "Conv(32, 3x3) -> ReLU -> MaxPool(2) -> FC(10)")
        if statements.input is None:
            raise GraphError("the file has no 'input' statement", statements.body.span,
                             hint="declare the input shape first, e.g. 'input 28x28x1' "
                                  "(H x W x C; L x C for 1-D, D x H x W x C for 3-D)")
        input_shape = self._input_shape(statements.input, env)
        first = self._add_node("Input", InputParams(input_shape), [], statements.input.span,
                               None, (), "Input")
        last = self._chain(statements.body.chain, env, (), first)
        if last == first:
            raise GraphError("the network has no layers: every layer in it is repeated 0 "
                             "times", statements.body.span,
                             hint="a repetition count of 0 leaves its group out; keep at "
                                  "least one layer (check the counts and --set values)")
        graph = self._finish(last)
        graph.graph["name"] = statements.network.name if statements.network else "network"
        graph.graph["input_shape"] = input_shape
        graph.graph["bindings"] = {k: v for k, v in env.values.items()}
        graph.graph["used_bindings"] = list(env.used)
        # the names the data bound (`classes`), where no `let` or override did
        graph.graph["data_bindings"] = {name: value for name, value in self.data.items()
                                        if name not in self.overrides
                                        and name not in self.let_names}
        return graph

    def _collect(self) -> _Statements:
        found = _Statements()
        for statement in self.program.statements:
            if isinstance(statement, ast.DefStmt):
                self._add_def(statement)
                continue
            slot = {ast.NetworkStmt: "network", ast.InputStmt: "input",
                    ast.BodyStmt: "body"}.get(type(statement))
            if slot is None:
                continue
            previous = getattr(found, slot)
            if previous is not None:
                what = {"network": "a second 'network' statement",
                        "input": "a second 'input' statement",
                        "body": "a second network chain"}[slot]
                hint = ("a file describes one network: join the chains with '->', or end the "
                        "previous line with '->' to continue it") if slot == "body" else None
                raise GraphError(what, statement.span, hint=hint).with_note(
                    "the first one is here", previous.span)
            setattr(found, slot, statement)
        return found

    def _add_def(self, statement: ast.DefStmt) -> None:
        if statement.name in self.defs:
            raise BindingError(f"macro '{statement.name}' is defined twice", statement.name_span
                               ).with_note("first defined here", self.defs[statement.name].span)
        if statement.name in OPS:
            raise BindingError(f"'def {statement.name}' would hide the layer {statement.name}",
                               statement.name_span, hint="choose another name for the macro")
        params = statement.params or ()
        for i, name in enumerate(params):
            if name in params[:i]:
                raise BindingError(f"macro '{statement.name}' has two parameters named '{name}'",
                                   statement.param_spans[i])
            if name in RESERVED:
                raise BindingError(f"'{name}' is a reserved word and cannot name a parameter",
                                   statement.param_spans[i])
        self.defs[statement.name] = statement

    def _check_layer_names(self, node) -> None:
        if isinstance(node, ast.Chain):
            for item in node.items:
                self._check_layer_names(item)
        elif isinstance(node, ast.Group):
            self._check_layer_names(node.chain)
        elif isinstance(node, ast.Repeat):
            self._check_layer_names(node.body)
        elif isinstance(node, ast.Branches):
            for branch in node.branches:
                self._check_layer_names(branch)
        elif node.name not in self.defs:
            self._op_for(node)

    def _op_for(self, call: ast.Call):
        op = OPS.get(call.name)
        if op is None or not op.user_callable:
            raise UnknownOpError(
                f"unknown layer '{call.name}'", call.name_span,
                hint=did_you_mean(call.name, user_op_names() + list(self.defs))
                or "see docs/language.md for the layers, or define a macro with 'def'")
        return op

    def _bind_lets(self) -> Env:
        for name, value in {**self.data, **self.overrides}.items():
            _check_override(name, value)
        env = Env({**self.data, **self.overrides})  # a `let` below replaces a data binding
        defined: dict[str, Span] = {}
        for statement in self.program.statements:
            if not isinstance(statement, ast.LetStmt):
                continue
            for binding in statement.bindings:
                if binding.name in RESERVED:
                    raise BindingError(f"'{binding.name}' is a reserved word", Span.at(
                        binding.span.line, binding.span.col, len(binding.name)),
                        hint="true, false, same, valid and full are values, not names")
                if binding.name in defined:
                    raise BindingError(f"'{binding.name}' is bound twice", binding.span
                                       ).with_note("first bound here", defined[binding.name])
                defined[binding.name] = binding.span
                if binding.name in self.overrides:
                    continue  # the command line / API wins over the file
                value = evaluate(binding.value, env)
                if isinstance(value, (tuple, str)):
                    raise BindingError("'let' binds numbers only", binding.value.span)
                env.values[binding.name] = value
        self.globals = dict(env.values)
        self.let_names = set(defined)
        return env

    def _input_shape(self, statement: ast.InputStmt, env: Env) -> tuple[int, ...]:
        value = evaluate(statement.shape, env)
        dims = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise GraphError("the input shape must be whole numbers >= 1",
                             statement.shape.span, hint="e.g. 'input 28x28x1' (H x W x C)")
        if any(d > MAX_WHOLE for d in dims):
            raise GraphError(f"the input shape must be at most 2^31 ({MAX_WHOLE:,}) along "
                             "each axis", statement.shape.span)
        if len(dims) > 4:
            raise GraphError(f"a {len(dims) - 1}-D input is not supported (at most 3-D: "
                             "D x H x W x C)", statement.shape.span)
        return dims

    # ---- the network -----------------------------------------------------------
    def _chain(self, chain: ast.Chain, env: Env, scopes: tuple, tail: int) -> int:
        for item in chain.items:
            tail = self._item(item, env, scopes, tail)
        return tail

    def _item(self, item: ast.Node, env: Env, scopes: tuple, tail: int) -> int:
        if isinstance(item, ast.Group):
            return self._chain(item.chain, env, scopes, tail)
        if isinstance(item, ast.Repeat):
            return self._repeat(item, env, scopes, tail)
        if isinstance(item, ast.Branches):
            return self._branches(item, env, scopes, tail)
        if item.name in self.defs:
            return self._macro(item, env, scopes, tail)
        return self._layer(item, env, scopes, tail)

    def _repeat(self, item: ast.Repeat, env: Env, scopes: tuple, tail: int) -> int:
        count = evaluate(item.count, env)
        if isinstance(count, tuple) and all(isinstance(c, int) for c in count):
            product = 1
            for c in count:
                product *= c
            count = product
        if isinstance(count, bool) or not isinstance(count, int):
            raise CnnDslError(f"a repetition count must be a whole number, got {show(count)}",
                              item.count.span)
        if count < 0:
            raise CnnDslError(f"repetition count {count} is negative", item.count.span,
                              hint="a repetition count is a whole number >= 0 (0 leaves "
                                   "the group out)")
        if count == 0:  # the group vanishes; its layer names must still be real layers
            self._check_layer_names(item.body)
            return tail
        self.counters["repeat"] += 1
        scope_id = f"rep{self.counters['repeat']}"
        for index in range(count):
            scope = Scope(scope_id, "repeat", f"×{count}", index, count, item.span)
            tail = self._item(item.body, env, scopes + (scope,), tail)
        return tail

    def _branches(self, item: ast.Branches, env: Env, scopes: tuple, tail: int) -> int:
        first_op = item.ops[0][0]
        for op, span in item.ops[1:]:
            if op != first_op:
                raise GraphError("'|' and '+' are mixed in one pair of braces", span,
                                 hint="'|' concatenates and '+' sums; nest braces to do both, "
                                      "e.g. { { A | B } + C }")
        tails = [self._chain(branch, env, scopes, tail) for branch in item.branches]
        op = "Concat" if first_op == "|" else "Add"
        return self._add_node(op, OPS[op].Params(), tails, item.span, None, scopes, op)

    def _macro(self, call: ast.Call, env: Env, scopes: tuple, tail: int) -> int:
        definition = self.defs[call.name]
        if call.name in self.macro_stack:
            raise BindingError(f"macro '{call.name}' calls itself", call.span,
                               hint="macros cannot be recursive; use a repetition '* n'")
        params = definition.params or ()
        values = self._macro_args(call, definition, params, env)
        shown = ", ".join(show(values[p]) for p in params)
        label = f"{call.name}({shown})" if params else call.name
        self.counters["macro"] += 1
        shown_label = f"{call.label}: {label}" if call.label else label
        scope = Scope(f"call{self.counters['macro']}", "macro", shown_label, 0, 1, call.span)
        # a macro body sees the `let` bindings and its own parameters (lexical scope)
        body_env = Env(dict(self.globals), env.used).child(values)
        self.macro_stack.append(call.name)
        try:
            return self._chain(definition.body, body_env, scopes + (scope,), tail)
        except CnnDslError as error:
            if not any(note.startswith(f"in {label}") for note, _ in error.notes):
                error.with_note(f"in {label}, called here", call.span)
            raise
        finally:
            self.macro_stack.pop()

    def _macro_args(self, call, definition, params, env) -> dict:
        positional = [a for a in call.args if a.name is None]
        keywords = [a for a in call.args if a.name is not None]
        signature = f"{call.name}({', '.join(params)})"
        if len(positional) > len(params):
            raise ArgumentError(f"macro {signature} takes {len(params)} argument(s), got "
                                f"{len(call.args)}", positional[len(params)].span).with_note(
                "defined here", definition.span)
        values = {p: evaluate(a.value, env) for p, a in zip(params, positional)}
        for a in keywords:
            if a.name not in params:
                raise ArgumentError(f"macro {signature} has no parameter '{a.name}'", a.span,
                                    hint=did_you_mean(a.name, params) or (
                                        f"its parameters are {', '.join(params)}" if params
                                        else "it takes no parameters"))
            if a.name in values:
                raise ArgumentError(f"parameter '{a.name}' is given twice", a.span)
            values[a.name] = evaluate(a.value, env)
        missing = [p for p in params if p not in values]
        if missing:
            raise ArgumentError(f"macro {signature} needs {', '.join(missing)}", call.span,
                                hint=f"call it as {signature}").with_note(
                "defined here", definition.span)
        return values

    def _layer(self, call: ast.Call, env: Env, scopes: tuple, tail: int) -> int:
        op = self._op_for(call)
        positional = [(evaluate(a.value, env), a.span) for a in call.args if a.name is None]
        keywords = {}
        for a in call.args:
            if a.name is None:
                continue
            if a.name in keywords:
                raise ArgumentError(f"{call.name}: argument '{a.name}' is given twice", a.span)
            keywords[a.name] = (_keyword_value(op, call.name, a, env), a.span)
        seen_keyword = False
        for a in call.args:
            if a.name is not None:
                seen_keyword = True
            elif seen_keyword:
                raise ArgumentError("a positional argument follows a keyword argument", a.span)
        # the same call in every iteration of a repetition: bind its values once
        key = (id(call), *(_typed(v) for v, _ in positional),
               *((k, _typed(v)) for k, (v, _) in keywords.items()))
        try:
            params = self.bound.get(key) or bind(op.Params, positional, keywords)
            self.bound[key] = params
        except BindError as error:
            raise ArgumentError(f"{call.name}: {error.message}", error.span or call.span,
                                hint=error.hint) from None
        node_id = self._add_node(op.name, params, [tail], call.span, call.label, scopes,
                                 call.name, call.label_span)
        self.nodes[node_id][1]["bare"] = not call.args
        return node_id

    # ---- nodes and names ---------------------------------------------------------
    def _add_node(self, op, params, inputs, span, label, scopes, written, label_span=None):
        if len(self.nodes) >= MAX_LAYERS:
            raise GraphError(f"the network expands to more than {MAX_LAYERS:,} layers", span,
                             hint="check the repetition counts")
        node_id = len(self.nodes)
        attrs = {"op": op, "params": params, "inputs": list(inputs), "span": span,
                 "label": label, "label_span": label_span, "scopes": scopes, "written": written}
        self.nodes.append((node_id, attrs))
        return node_id

    def _finish(self, last: int) -> Network:
        names = _assign_names(self.nodes)
        graph = Network()
        for node_id, attrs in self.nodes:
            attrs["inputs"] = [names[i] for i in attrs["inputs"]]
            attrs["name"] = names[node_id]
        # in bulk: a node at a time is most of the time of a 100,000-layer network
        graph.add_nodes_from((attrs["name"], attrs) for _, attrs in self.nodes)
        graph.add_edges_from((source, attrs["name"]) for _, attrs in self.nodes
                             for source in attrs["inputs"])
        graph.graph["output"] = names[last]
        return graph


def _typed(value):
    """A cache key that tells 1, 1.0 and true apart (they are equal in Python)."""
    if isinstance(value, tuple):
        return tuple(_typed(v) for v in value)
    return type(value), value


def _check_override(name, value) -> None:
    """A binding from the command line or the API: a name `let` could bind, to a number."""
    if not isinstance(name, str) or not name.isidentifier():
        raise BindingError(f"cannot bind {name!r}: not a name")
    if name in RESERVED:
        raise BindingError(f"cannot bind '{name}': it is a reserved word",
                           hint="true, false, same, valid and full are values, not names")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BindingError(f"'{name}' must be bound to a number, got {show(value)}")
    check_number(value, None, f"value of '{name}'")


def _assign_names(nodes) -> dict[int, str]:
    """Labels where given (label_1, label_2, ... when one label is expanded many times),
    else `<op>N` counted per op in source order, skipping names a label took."""
    by_label: dict[str, list[tuple[int, dict]]] = {}
    for node_id, attrs in nodes:
        if attrs["label"] and attrs["label"].startswith(RESERVED_LABEL_PREFIX):
            raise BindingError(f"label '{attrs['label']}' begins with "
                               f"'{RESERVED_LABEL_PREFIX}', which is kept for cnndsl's own "
                               "names", attrs["label_span"], hint="choose another label")
        if attrs["label"]:
            group = by_label.setdefault(attrs["label"], [])
            if group and group[0][1]["label_span"] != attrs["label_span"]:
                raise BindingError(f"label '{attrs['label']}' is used twice",
                                   attrs["label_span"]).with_note(
                    "first used here", group[0][1]["label_span"])
            group.append((node_id, attrs))
    names: dict[int, str] = {}
    for label, group in by_label.items():
        for i, (node_id, _) in enumerate(group, start=1):
            names[node_id] = label if len(group) == 1 else f"{label}_{i}"
    taken = set(names.values())
    counters: dict[str, int] = {}
    for node_id, attrs in nodes:
        if node_id in names:
            continue
        if OPS[attrs["op"]].is_input:
            names[node_id] = "input"
            continue
        base = attrs["op"].lower()
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}{counters[base]}"
            if candidate not in taken:
                break
        names[node_id] = candidate
        taken.add(candidate)
    return names

