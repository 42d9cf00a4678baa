"""`cnndsl render`: the produced SVG and DOT are parsed and compared with the IR."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl.cli import main
from cnndsl.render import _representatives, shape_text, to_dot

EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.cnn"))
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="the graphviz 'dot' program is not installed")
SVG = "{http://www.w3.org/2000/svg}"


def graph_of(name):
    return cnndsl.check_file(str(EXAMPLES / f"{name}.cnn"))


def all_scopes(graph):
    seen = {}
    for node in graph.nodes.values():
        for scope in node["scopes"]:
            seen.setdefault(scope.id, scope)
    return seen


def svg_parts(path):
    """(node titles, {edge title: label}, {cluster title: label}) of a graphviz SVG."""
    root = ET.parse(path).getroot()
    nodes, edges, clusters = [], {}, {}
    for group in root.iter(f"{SVG}g"):
        kind = group.get("class")
        title = group.find(f"{SVG}title").text if group.find(f"{SVG}title") is not None else ""
        texts = " ".join(t.text or "" for t in group.iter(f"{SVG}text")).strip()
        if kind == "node":
            nodes.append(title)
        elif kind == "edge":
            edges[title.replace("&#45;", "-")] = texts
        elif kind == "cluster":
            clusters[title] = texts
    return nodes, edges, clusters


def dot_json(dot_source):
    """Let graphviz itself parse the DOT text (no regex), as JSON."""
    result = subprocess.run(["dot", "-Tjson0"], input=dot_source, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


@needs_dot
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_svg_matches_the_ir(name, tmp_path, capsys):
    out = tmp_path / f"{name}.svg"
    assert main(["render", str(EXAMPLES / f"{name}.cnn"), "-o", str(out)]) == 0
    graph = graph_of(name)
    nodes, edges, clusters = svg_parts(out)
    assert sorted(nodes) == sorted([*graph.nodes, "__output__"])
    for source, target in graph.edges:
        assert edges[f"{source}->{target}"] == shape_text(graph.nodes[source]["shape"])
    assert len(edges) == graph.number_of_edges() + 1  # + the edge to the output node
    scopes = all_scopes(graph)
    assert sorted(clusters) == sorted(f"cluster_{sid}" for sid in scopes)
    for sid, scope in scopes.items():
        assert clusters[f"cluster_{sid}"] == scope.label


@needs_dot
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_dot_matches_the_ir(name, tmp_path, capsys):
    out = tmp_path / f"{name}.dot"
    assert main(["render", str(EXAMPLES / f"{name}.cnn"), "-o", str(out)]) == 0
    parsed = dot_json(out.read_text())
    graph = graph_of(name)
    objects = parsed["objects"]
    drawn = [o["name"] for o in objects if not o["name"].startswith("cluster_")]
    assert sorted(drawn) == sorted([*graph.nodes, "__output__"])
    labels = {(objects[e["tail"]]["name"], objects[e["head"]]["name"]): e.get("label", "").strip()
              for e in parsed["edges"]}
    for source, target in graph.edges:
        assert labels[(source, target)] == shape_text(graph.nodes[source]["shape"])
    clusters = {o["name"]: o for o in objects if o["name"].startswith("cluster_")}
    assert sorted(clusters) == sorted(f"cluster_{sid}" for sid in all_scopes(graph))
    # every IR node sits in the clusters of its scopes
    index = {o["name"]: i for i, o in enumerate(objects)}
    for node_name, node in graph.nodes(data=True):
        for scope in node["scopes"]:
            assert index[node_name] in clusters[f"cluster_{scope.id}"]["nodes"]


def test_node_labels_show_op_and_key_arguments():
    graph = cnndsl.check_text("input 28x28x1\nConv(32, 3, stride=2) -> MaxPool(3, 2, pad=1)"
                              " -> c: Conv(8, 5, pad=valid, bias=false) -> FC(10)")
    source = to_dot(graph).source
    assert "Conv 32 3×3/2" in source
    assert "MaxPool 3×3/2 pad=1" in source
    assert "Conv 8 5×5 pad=valid bias=false" in source
    assert 'label=" 14×14×32 "' in source


@needs_dot
def test_collapse_draws_each_repetition_once(tmp_path, capsys):
    out = tmp_path / "dense.svg"
    assert main(["render", str(EXAMPLES / "densenet121.cnn"), "--collapse", "-o",
                 str(out)]) == 0
    graph = graph_of("densenet121")
    nodes, edges, clusters = svg_parts(out)
    representatives = _representatives(graph)
    drawn = sorted({r for r in representatives.values()})
    assert sorted(nodes) == sorted([*drawn, "__output__"])
    # 4 dense blocks drawn once each: 6 + 12 + 24 + 16 = 58 dense layers become 4
    concat_nodes = [n for n in nodes if n.startswith("concat")]
    assert len(concat_nodes) == 4
    repeat_labels = sorted(label for label in clusters.values() if "drawn once" in label)
    assert repeat_labels == sorted(f"×{k} (drawn once)" for k in (6, 12, 24, 16))
    # no edge runs backwards from one iteration to the first one
    for title in edges:
        source, target = title.split("->")
        if target == "__output__":
            continue
        assert list(graph.nodes).index(source) < list(graph.nodes).index(target)


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_renders_to_png_and_pdf(name, fmt, magic, tmp_path, capsys):
    out = tmp_path / f"{name}.{fmt}"
    collapse = ["--collapse"] if name in ("densenet121", "googlenet") else []
    assert main(["render", str(EXAMPLES / f"{name}.cnn"), "-o", str(out), *collapse]) == 0
    assert out.read_bytes()[:4] == magic and out.stat().st_size > 5000


@needs_dot
def test_shape_error_renders_up_to_the_error(tmp_path, capsys):
    source = tmp_path / "bad.cnn"
    source.write_text("input 28x28x1\nConv(8, 3) -> MaxPool(4) -> MaxPool(4) -> "
                      "Conv(16, 5, pad=valid) -> FC(10)\n")
    out = tmp_path / "bad.svg"
    assert main(["render", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "bad.cnn:2:" in err and "kernel 5x5 is larger" in err and "drawn up to the error" in err
    root = ET.parse(out).getroot()
    note = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "node"
                and g.find(f"{SVG}title").text == "__error__")
    drawn_message = " ".join(t.text for t in note.iter(f"{SVG}text"))
    assert "kernel 5×5 is larger than its padded input 1×1" in drawn_message
    conv2 = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "node"
                 and g.find(f"{SVG}title").text == "conv2")
    assert any(shape.get("stroke") == "#cc0000" for shape in conv2.iter(f"{SVG}path")) or \
        any(shape.get("stroke") == "#cc0000" for shape in conv2.iter(f"{SVG}polygon"))
    fc1 = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "node"
               and g.find(f"{SVG}title").text == "fc1")
    assert "stroke-dasharray" in ET.tostring(fc1).decode()  # not shape-checked: dashed


def test_syntax_error_writes_nothing(tmp_path, capsys):
    source = tmp_path / "bad.cnn"
    source.write_text("input 28x28x1\nConv(8 -> ReLU\n")
    out = tmp_path / "bad.svg"
    assert main(["render", str(source), "-o", str(out)]) == 1
    assert not out.exists()
    err = capsys.readouterr().err
    assert "bad.cnn:2:8: error: unexpected '->'" in err
    assert "hint: close the '(' opened at 2:5 first" in err


def test_missing_dot_writes_the_source_and_says_how_to_install(tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "lenet.png"
    status = main(["render", str(EXAMPLES / "lenet5.cnn"), "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 1
    assert not out.exists()
    written = tmp_path / "lenet.dot"
    assert written.read_text().startswith("digraph")
    assert "'dot' program is not installed" in err and "apt-get install graphviz" in err
    assert "Traceback" not in err


def test_dot_format_needs_no_dot_program(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "lenet.dot"
    assert main(["render", str(EXAMPLES / "lenet5.cnn"), "--format", "dot", "-o",
                 str(out)]) == 0
    assert "c1" in out.read_text()


@pytest.mark.parametrize("argv", [["-o", "x.png", "--format", "svg"], ["-o", "x.jpg"],
                                  ["--rankdir", "RL"]])
def test_render_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["render", str(EXAMPLES / "lenet5.cnn"), *argv])
    assert exit_.value.code == 2


def test_default_output_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if shutil.which("dot") is None:
        pytest.skip("needs dot")
    assert main(["render", str(EXAMPLES / "lenet5.cnn"), "--rankdir", "LR"]) == 0
    assert (tmp_path / "lenet5.svg").exists()
