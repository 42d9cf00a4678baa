"""The grammar: every spelling of docs/language.md-2 parses to the same network."""

import pytest

from cnndsl import ast, check_text, parse
from cnndsl.errors import ParseError


def layer_ops(text, **bindings):
    graph = check_text(text, bindings)
    return [node["op"] for node in graph.nodes.values() if node["op"] != "Input"]


def test_arrow_and_repetition_spellings_are_the_same():
    ascii_ = "input 28x28x1\n[(Conv->ReLU)*2->Pool]*2->(FC->ReLU)*1->Softmax"
    unicode_ = "input 28x28x1\n[(Conv→ReLU)×2→Pool]×2→(FC→ReLU)×1→Softmax"
    brackets = "input 28x28x1\n((Conv->ReLU)*2->Pool)*2->[FC->ReLU]*1->Softmax"
    assert layer_ops(ascii_) == layer_ops(unicode_) == layer_ops(brackets)
    assert layer_ops(ascii_).count("Conv") == 4


def test_lecture_notation_compiles_as_written_once_bound():
    text = "input 28x28x1\nlet k = 3, m = 2, n = 2\n[(Conv→ReLU)*k→Pool]*m→(FC→ReLU)*n→Softmax"
    ops = layer_ops(text)
    assert ops.count("Conv") == 6 and ops.count("MaxPool") == 2 and ops.count("FC") == 2


def test_repetition_count_forms():
    base = "input 8x8x1\nlet k = 2\n"
    assert layer_ops(base + "ReLU * k").count("ReLU") == 2
    assert layer_ops(base + "ReLU * 3").count("ReLU") == 3
    assert layer_ops(base + "ReLU * (k + 1)").count("ReLU") == 3
    # `X * k * 2` repeats `X * k` twice
    assert layer_ops(base + "ReLU * k * 2").count("ReLU") == 4
    assert layer_ops(base + "ReLU × 3 × 2").count("ReLU") == 6


def test_multi_line_statements():
    text = """
    # comment lines and blank lines are fine
    input 28x28x1

    Conv(8,
         3x3)
      -> ReLU ->
    MaxPool(2)
    -> { Conv(4, 1)
       | Conv(4, 3) }
    """
    assert layer_ops(text) == ["Conv", "ReLU", "MaxPool", "Conv", "Conv", "Concat"]


def test_statement_forms():
    program = parse("network N\ninput 28x28x1\nlet a = 1, b = a + 1\n"
                    "def f(c) = Conv(c)\ndef g = ReLU\ndef h() = Tanh\nf(2) -> g -> h()")
    kinds = [type(s).__name__ for s in program.statements]
    assert kinds == ["NetworkStmt", "InputStmt", "LetStmt", "DefStmt", "DefStmt", "DefStmt",
                     "BodyStmt"]
    defs = [s for s in program.statements if isinstance(s, ast.DefStmt)]
    assert [d.params for d in defs] == [("c",), None, ()]


def test_expressions():
    text = ("input 32x32x3\nlet k = 3\n"
            "Conv(2 ^ 3 * 2, kernel=(k, k + 2), pad=(k // 2, (k + 2) // 2), stride=-(-1))")
    graph = check_text(text)
    conv = graph.nodes["conv1"]
    assert conv["params"].filters == 16
    assert conv["params"].kernel == (3, 5) and conv["params"].pad == (1, 2)
    assert conv["shape"] == (32, 32, 16)


def test_sizes_between_literal_numbers():
    graph = check_text("input 28 x 28 x 1\nConv(4, 3 × 5, pad=valid)")
    assert graph.graph["input_shape"] == (28, 28, 1)
    assert graph.nodes["conv1"]["shape"] == (26, 24, 4)


def test_labels_name_layers():
    graph = check_text("input 32x32x1\nc1: Conv(6, 5x5, pad=valid) -> s2: AvgPool(2) -> Conv(3)")
    assert list(graph.nodes) == ["input", "c1", "s2", "conv1"]


def test_labels_inside_macros_and_repetitions_stay_unique():
    graph = check_text("input 8x8x1\ndef b = c: Conv(2) -> ReLU\nb -> b -> (x: Tanh) * 2")
    names = list(graph.nodes)
    assert names == ["input", "c_1", "relu1", "c_2", "relu2", "x_1", "x_2"]


def test_generated_names_skip_labels():
    graph = check_text("input 8x8x1\nconv1: Conv(2) -> Conv(2) -> Conv(2)")
    assert list(graph.nodes) == ["input", "conv1", "conv2", "conv3"]


def test_branch_forms():
    graph = check_text("input 8x8x4\n{ Identity + Conv(4, 3) -> ReLU } -> { Conv(2, 1) | "
                       "Conv(3, 3) | MaxPool(3, 1, pad=1) }")
    merge_add, merge_cat = graph.nodes["add1"], graph.nodes["concat1"]
    assert merge_add["inputs"] == ["identity1", "relu1"]
    assert merge_cat["inputs"] == ["conv2", "conv3", "maxpool1"]
    assert merge_cat["shape"] == (8, 8, 2 + 3 + 4)
    # fan-out: the first layer of each branch reads the same node
    assert graph.nodes["identity1"]["inputs"] == graph.nodes["conv1"]["inputs"] == ["input"]


def test_scopes_record_repetitions_and_macro_calls():
    graph = check_text("input 8x8x1\ndef blk(c) = (Conv(c) -> ReLU) * 2\nblk(4) -> blk(8)")
    scopes = [[(s.kind, s.label, s.index) for s in n["scopes"]] for n in graph.nodes.values()]
    assert scopes[1] == [("macro", "blk(4)", 0), ("repeat", "×2", 0)]
    assert scopes[3] == [("macro", "blk(4)", 0), ("repeat", "×2", 1)]
    assert scopes[5] == [("macro", "blk(8)", 0), ("repeat", "×2", 0)]
    first_call = graph.nodes["conv1"]["scopes"][0].id
    second_call = graph.nodes["conv3"]["scopes"][0].id
    assert first_call != second_call


def test_aliases():
    graph = check_text("input 8x8x1\nPool -> Dense(3)")
    assert [n["op"] for n in graph.nodes.values()] == ["Input", "MaxPool", "FC"]
    assert [n["written"] for n in graph.nodes.values()] == ["Input", "Pool", "Dense"]


def test_macro_sees_let_bindings_and_its_parameters():
    text = "input 8x8x1\nlet w = 4\ndef f(c) = Conv(c * w)\nf(2) -> f(c=3)"
    graph = check_text(text)
    assert graph.nodes["conv1"]["shape"][-1] == 8
    assert graph.nodes["conv2"]["shape"][-1] == 12


def test_spans_point_at_the_source():
    program = parse("input 28x28x1\n  Conv(32, 3) -> ReLU")
    body = program.statements[1].chain
    conv = body.items[0]
    assert (conv.span.line, conv.span.col, conv.span.end_col) == (2, 3, 14)
    assert (conv.args[1].span.line, conv.args[1].span.col) == (2, 12)


@pytest.mark.parametrize("text", ["input 28x28x1\nConv ->", "input 28x28x1\n(Conv",
                                  "input 28x28x1\nConv ReLU", "input\nConv"])
def test_syntax_errors_are_parse_errors(text):
    with pytest.raises(ParseError) as caught:
        check_text(text)
    assert caught.value.span is not None
