"""Fuzz of the whole front end (issue 11): `check_text` raises nothing but CnnDslError, and
no check takes a second.

Two sources of programs:
- grammar-aware generation: layers from `cnndsl.ops.OPS` with random arguments (numbers,
  sizes, tuples, words, expressions), chains, repetitions, branches, labels, lets, macros
  and train blocks;
- mutation of every file in examples/: random tokens and characters deleted, duplicated,
  inserted or swapped.

The number of examples per test comes from CNNDSL_FUZZ_EXAMPLES (default 300, so the file
runs in well under a minute in CI). A nightly run sets it high:

    CNNDSL_FUZZ_EXAMPLES=100000 python -m pytest -q tests/test_fuzz_frontend.py
"""

import dataclasses
import os
import re
import time

from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnndsl import check_text
from cnndsl.errors import CnnDslError
from cnndsl.ops import OPS

EXAMPLE_COUNT = int(os.environ.get("CNNDSL_FUZZ_EXAMPLES", "300"))
TIME_LIMIT = 1.0  # seconds per check
FUZZ = settings(max_examples=EXAMPLE_COUNT, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck), database=None)

LAYERS = sorted(name for name, op in OPS.items() if op.user_callable)
WORDS = ["same", "valid", "full", "true", "false", "k", "n", "c", "x", "sgd", "nan", "inf"]
SOURCES = {path.name: path.read_text(encoding="utf-8") for path in sorted(
    EXAMPLES.glob("*.cnn"))}
TOKEN = re.compile(r"\s+|\w+|->|//|.", re.UNICODE)
PIECES = ["->", "→", "*", "×", "(", ")", "[", "]", "{", "}", "|", "+", "-", "^", "//", ",",
          ":", "=", "\n", " ", "#", "\\\n", "x", "3x3", "0", "1", "2^64", "1e400", "10^30",
          "def", "let", "train", "input", "network", "Conv", "FC", "ReLU", "Identity",
          "same", "\t", "\r", "\f", "é", "\u2028", "\0", "999999999999999999999999999999999"]


def run_check(text: str, bindings=None) -> None:
    elapsed = _timed_check(text, bindings)
    if elapsed >= TIME_LIMIT:  # a slow input is slow twice; a busy machine rarely is
        elapsed = min(elapsed, _timed_check(text, bindings))
    assert elapsed < TIME_LIMIT, f"check took {elapsed:.2f} s on:\n{text[:2000]}"


def _timed_check(text: str, bindings) -> float:
    start = time.process_time()  # CPU time: other processes on the machine do not count
    try:
        check_text(text, bindings)
    except CnnDslError as error:
        str(error)  # the located report must format too
    return time.process_time() - start


# ---- generation ------------------------------------------------------------------------------

small_ints = st.integers(min_value=-3, max_value=40)
numbers = st.one_of(
    small_ints.map(str),
    st.sampled_from(["0", "1", "2", "3", "64", "2^31", "2^40", "2^63", "2^64", "10^30",
                     "0.5", "1e-5", "1e400", "0.0", ".5", "3.", "1e18*1e18"]))


@st.composite
def expressions(draw, depth=2):
    choice = draw(st.integers(0, 6 if depth > 0 else 2))
    if choice == 0:
        return draw(numbers)
    if choice == 1:
        return draw(st.sampled_from(WORDS))
    if choice == 2:
        return "x".join(str(draw(st.integers(0, 9))) for _ in range(draw(st.integers(2, 4))))
    if choice == 3:
        items = draw(st.lists(expressions(depth=depth - 1), min_size=2, max_size=4))
        return f"({', '.join(items)})"
    if choice == 4:
        return f"-{draw(expressions(depth=depth - 1))}"
    op = draw(st.sampled_from(["+", "-", "*", "//", "^", "×"]))
    left, right = draw(expressions(depth=depth - 1)), draw(expressions(depth=depth - 1))
    return f"({left} {op} {right})" if choice == 5 else f"{left}{op}{right}"


TAME_ARGS = {"filters": "1 + c", "units": "c", "kernel": "k", "size": "2", "stride": "1",
             "pad": "same", "p": "0.5", "alpha": "0.1", "eps": "1e-3", "momentum": "0.1",
             "multiplier": "1", "groups": "1", "bias": "false", "dilation": "1",
             "output_pad": "0"}


@st.composite
def tame_calls(draw, macros=()):
    """A call likely to check: sensible arguments by keyword, some left to defaults."""
    name = draw(st.sampled_from(LAYERS + list(macros)))
    op = OPS.get(name)
    if op is None:
        return f"{name}(2, k)" if draw(st.booleans()) else f"{name}(c=2)"
    fields = [f.name for f in dataclasses.fields(op.Params)]
    chosen = draw(st.lists(st.sampled_from(fields), unique=True)) if fields else []
    args = [f"{f}={TAME_ARGS.get(f, '1')}" for f in chosen]
    if name in ("Conv", "ConvT", "SeparableConv", "LocalConv") and "filters" not in chosen:
        args.insert(0, "4")
    if name in ("ConvT",) and "kernel" not in chosen:
        args.append("kernel=2")
    return f"{name}({', '.join(args)})" if args else name


@st.composite
def calls(draw, macros=(), tame=False):
    if tame:
        return draw(tame_calls(macros))
    name = draw(st.sampled_from(LAYERS + list(macros) + ["Bogus", "conv"]))
    label = f"{draw(st.sampled_from(['a', 'b', '__output__', 'relu1']))}: " if draw(
        st.integers(0, 5)) == 0 else ""
    op = OPS.get(name)
    fields = [f.name for f in dataclasses.fields(op.Params)] if op and dataclasses.is_dataclass(
        op.Params) else ["c", "k"]
    if draw(st.booleans()) and draw(st.integers(0, 3)) != 0:
        return label + name
    args = []
    for i in range(draw(st.integers(0, min(len(fields) + 1, 4)))):
        value = draw(expressions())
        if draw(st.booleans()) or i >= len(fields):
            key = draw(st.sampled_from(fields + ["bogus"]))
            args.append(f"{key}={value}")
        else:
            args.append(value)
    return f"{label}{name}({', '.join(args)})"


@st.composite
def chains(draw, depth=2, macros=(), tame=False):
    items = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 5 if depth > 0 else 0))
        if kind <= 2:
            item = draw(calls(macros, tame))
        elif kind == 3:
            inner = draw(chains(depth - 1, macros, tame))
            item = f"({inner})" if draw(st.booleans()) else f"[{inner}]"
        elif kind == 4:
            op = draw(st.sampled_from([" | ", " + "]))
            branches = draw(st.lists(chains(depth - 1, macros, tame), min_size=2, max_size=3))
            item = "{ " + op.join(branches) + " }"
        else:
            count = draw(st.sampled_from(["2", "n"]) if tame else expressions(depth=1))
            item = f"({draw(chains(depth - 1, macros, tame))}) * {count}"
        if draw(st.integers(0, 6)) == 0:
            item = f"{item} * {draw(st.sampled_from(['2', '3', 'n', '(1+1)', '2x2', '0']))}"
        items.append(item)
    arrow = draw(st.sampled_from([" -> ", " → ", " ->\n  "]))
    return arrow.join(items)


@st.composite
def programs(draw):
    """Half wild (any argument, any order), half tame (likely to pass the checks, so
    the shape pass and the train block are reached too)."""
    if draw(st.booleans()):
        return draw(tame_programs())
    lines = []
    if draw(st.booleans()):
        lines.append(f"network {draw(st.sampled_from(['Net', 'A_1', 'same']))}")
    shape = draw(st.sampled_from(["28x28x1", "32x32x3", "16x1", "8x8x8x1", "(n, n, 1)",
                                  "4", "0x3x1", "28x28x1x1x1", "2^31x2x1"]))
    lets = draw(st.lists(st.tuples(st.sampled_from(["n", "k", "c", "valid", "x"]),
                                   expressions(depth=1)), max_size=3))
    for name, value in lets:
        lines.append(f"let {name} = {value}")
    macros = []
    for name in draw(st.lists(st.sampled_from(["block", "cbr", "Conv"]), max_size=2)):
        params = draw(st.sampled_from(["", "(c)", "(c, k)", "(same)", "()"]))
        lines.append(f"def {name}{params} = {draw(chains(1))}")
        macros.append(name)
    if draw(st.integers(0, 9)):
        lines.append(f"input {shape}")
    lines.append(draw(chains(2, macros)))
    if draw(st.booleans()):
        keys = ["optimizer", "lr", "epochs", "batch", "momentum", "val", "schedule", "seed",
                "nesterov", "bogus"]
        settings_ = [f"{draw(st.sampled_from(keys))} = {draw(expressions(depth=1))}"
                     for _ in range(draw(st.integers(0, 3)))]
        lines.append("train { " + ", ".join(settings_) + " }")
    order = draw(st.permutations(lines)) if draw(st.integers(0, 4)) == 0 else lines
    return "\n".join(order) + "\n"


@st.composite
def tame_programs(draw):
    lines = ["let c = 4, k = 3, n = 2", f"input {draw(st.sampled_from(SHAPES))}"]
    macros = []
    if draw(st.booleans()):
        lines.insert(0, f"def block(c) = {draw(chains(1, (), True))}")
        macros.append("block")
    lines.append(draw(chains(2, macros, True)) + " -> Flatten -> FC(3)")
    if draw(st.booleans()):
        lines.append(f"train {{ lr = {draw(numbers)}, epochs = {draw(small_ints)}, "
                     f"optimizer = {draw(st.sampled_from(['sgd', 'adam', 'foo']))} }}")
    return "\n".join(lines) + "\n"


SHAPES = ["28x28x1", "16x16x3", "32x2", "8x8x8x1"]

bindings = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["n", "k", "c", "valid", "true", "x y", "e"]),
    st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=3)),
    max_size=2))


@FUZZ
@given(programs(), bindings)
def test_generated_programs_check_or_fail_cleanly(text, given_bindings):
    run_check(text, given_bindings)


# ---- mutation of the examples ----------------------------------------------------------------

@st.composite
def mutants(draw):
    name = draw(st.sampled_from(sorted(SOURCES)))
    tokens = TOKEN.findall(SOURCES[name])
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(tokens)))
        action = draw(st.integers(0, 5))
        if action == 0 and where < len(tokens):
            del tokens[where]
        elif action == 1 and where < len(tokens):
            tokens.insert(where, tokens[where])
        elif action == 2:
            tokens.insert(where, draw(st.sampled_from(PIECES)))
        elif action == 3:
            tokens.insert(where, draw(st.sampled_from(tokens or ["x"])))
        elif action == 4 and where < len(tokens):
            token = tokens[where]
            at = draw(st.integers(0, len(token)))
            char = draw(st.characters(codec="utf-8"))
            tokens[where] = token[:at] + char + token[at + 1:]
        elif where < len(tokens):
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[where], tokens[other] = tokens[other], tokens[where]
    return "".join(tokens)


@FUZZ
@given(mutants())
def test_mutated_examples_check_or_fail_cleanly(text):
    run_check(text)


def test_every_example_checks():
    for name, text in SOURCES.items():
        check_text(text, filename=name)
