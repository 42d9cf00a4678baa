"""The Python side of the CLI (issue 13): summary, inline display in Jupyter, save / load
with the trust check, datasets. Each call gives what its command gives."""

import json
import os
import subprocess
import sys
import warnings

import networkx as nx
import numpy as np
import pytest
from conftest import EXAMPLES, ROOT
from test_train import TINY, synthetic

import cnndsl
from cnndsl.checkpoint import CheckpointError
from cnndsl.cli import main
from cnndsl.data import DataError
from cnndsl.display import Summary
from cnndsl.ir import Network

LENET = EXAMPLES / "lenet5.cnn"
#: 2 + 2 * 80 = 162 layers: above 150, the diagram draws the repetition once
LONG = "network Long\ninput 8x8x1\n(Conv(4, 3) -> ReLU) * 80 -> FC(3)\n"


# ---- summary --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, arguments", [
    ([], {}), (["--rf", "--memory"], {"rf": True, "memory": True}),
    (["--batch", "8"], {"batch": 8})])
def test_summary_is_the_check_table(capsys, flags, arguments):
    assert main(["check", *flags, str(LENET)]) == 0
    table = capsys.readouterr().out
    summary = cnndsl.load(LENET).summary(**arguments)
    assert isinstance(summary, str) and summary + "\n" == table


def test_summary_shows_as_the_table_in_a_repl_and_a_notebook():
    summary = cnndsl.compile(TINY).summary()
    assert isinstance(summary, Summary)
    assert repr(summary) == str(summary)  # no quotes, no \n escapes
    assert repr(summary).startswith("network Tiny: input 8x8x1 -> output 3, 7 layers\n")
    from IPython.lib.pretty import pretty

    assert pretty(summary) == str(summary)


def test_summary_json_is_check_json(capsys):
    assert main(["check", "--json", str(LENET)]) == 0
    assert cnndsl.load(LENET).summary(json=True) == json.loads(capsys.readouterr().out)
    assert cnndsl.compile(TINY).summary(json=True, batch=3)["memory"]["batch"] == 3
    with pytest.raises(ValueError, match="batch must be a whole number >= 1, got 0"):
        cnndsl.compile(TINY).summary(batch=0)


# ---- Jupyter display ----------------------------------------------------------------------------

@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """A current folder that must stay empty: displaying writes no file."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", [lambda: cnndsl.load(LENET), lambda: cnndsl.check_file(LENET)],
                         ids=["model", "graph"])
def test_model_and_graph_display_diagram_and_table(empty_cwd, make):
    shown = make()
    svg = shown._repr_svg_()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "LeNet5 — 61,706 parameters" in svg and "Conv 6 5×5 pad=valid" in svg
    page = shown._repr_html_()
    assert page.startswith("<div class=\"cnndsl-network\"><style>")
    assert "<svg" in page and "<table>" in page and "<tr id=\"layer-c1\">" in page
    assert "<strong>LeNet5</strong>: input 32×32×1 → output 10 · 12 layers · 61,706 " \
           "parameters" in page
    # the page's style, scoped to the output: it does not restyle the notebook
    style = page[page.index("<style>") + 7:page.index("</style>")]
    rules = [rule.split("{")[0] for rule in style.split("}") if "{" in rule]
    assert rules and all(r.strip().startswith(".cnndsl-network") for r in rules), rules


def test_a_checked_graph_is_a_networkx_digraph_of_its_own_class():
    graph = cnndsl.check_text(TINY)
    assert isinstance(graph, Network) and isinstance(graph, nx.DiGraph)
    assert type(graph.copy()) is Network and list(graph.copy().nodes) == list(graph.nodes)


def test_a_large_network_is_drawn_collapsed(empty_cwd):
    model = cnndsl.compile(LONG)
    svg = model._repr_svg_()
    assert "(drawn once)" in svg and svg.count("class=\"node\"") < 10
    page = model._repr_html_()
    assert "Each repetition is drawn once" in page and "<tr id=\"layer-conv80\">" in page


def test_without_graphviz_the_svg_is_none_and_the_html_keeps_the_table(empty_cwd,
                                                                      monkeypatch):
    model = cnndsl.load(LENET)
    monkeypatch.setenv("PATH", str(empty_cwd))  # no `dot` on it
    assert model._repr_svg_() is None  # Jupyter falls back to the next representation
    page = model._repr_html_()
    assert "<svg" not in page and "<tr id=\"layer-c1\">" in page
    assert "graphviz&#x27;s &#x27;dot&#x27; program, which is not installed" in page


def test_a_graph_stopped_at_a_shape_error_displays_up_to_it(empty_cwd):
    with pytest.raises(cnndsl.ShapeError) as caught:
        cnndsl.check_text("input 8x8x1\nConv(4, 3) -> MaxPool(16) -> FC(3)\n")
    graph = caught.value.graph
    svg = graph._repr_svg_()
    assert "shape error" in svg and "maxpool1" in svg
    page = graph._repr_html_()
    assert "&lt;-- the error below" in page and "<svg" in page
    assert "&lt;string&gt;:2:15: error: MaxPool &#x27;maxpool1&#x27;" in page  # below it


# ---- save and load ----------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    model = cnndsl.compile(TINY)
    model.fit(*synthetic(96, 0), epochs=1, verbose=False)  # BatchNorm statistics move too
    model.save(tmp_path / "w.npz")
    (tmp_path / "tiny.cnn").write_text(TINY)
    for loaded in (cnndsl.load(tmp_path / "tiny.cnn", weights=tmp_path / "w.npz"),
                   cnndsl.compile(TINY, weights=str(tmp_path / "w.npz")),
                   cnndsl.compile(TINY, seed=5).load_weights(tmp_path / "w.npz")):
        for name, array in {**model.parameters(), **model.buffers()}.items():
            assert np.array_equal(array, {**loaded.parameters(), **loaded.buffers()}[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.cnn", "w.npz"]  # no debris


def test_saved_weights_work_with_the_cli_without_the_cnn_file(tmp_path, capsys):
    model = cnndsl.compile(TINY)
    model.save(tmp_path / "w.npz")
    x, _ = synthetic(2, 3)
    from PIL import Image

    Image.fromarray((x[0, :, :, 0] * 255).astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "tiny.cnn").write_text(TINY)
    assert main(["predict", str(tmp_path / "tiny.cnn"), "--weights", str(tmp_path / "w.npz"),
                 str(tmp_path / "a.png")]) == 0
    line = capsys.readouterr().out.strip()
    probability = model.predict(np.asarray(Image.open(tmp_path / "a.png"),
                                           np.float32)[None, :, :, None] / 255)
    best = int(probability.argmax())
    assert line.split(": ")[1].startswith(f"{best} {probability[0, best]:.3f}")
    _, meta = cnndsl.checkpoint.load(str(tmp_path / "w.npz"))
    assert meta["architecture"] == TINY and meta["name"] == "Tiny"


def test_weights_of_another_network_are_refused_with_the_first_difference(tmp_path):
    cnndsl.compile(TINY).save(tmp_path / "w.npz")
    other = TINY.replace("Conv(4, 3)", "Conv(5, 3)")
    with pytest.raises(CheckpointError) as caught:
        cnndsl.compile(other, weights=tmp_path / "w.npz")
    assert caught.value.message == ("'" + str(tmp_path / "w.npz") + "' holds weights of another "
                                    "network: conv1 (Conv) has filters=4 in w.npz but "
                                    "filters=5 here")
    assert "force=True" in caught.value.hint and "--force" not in caught.value.hint
    model = cnndsl.compile(other)
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(CheckpointError), pytest.warns(UserWarning, match="filters=4"):
        model.load_weights(tmp_path / "w.npz", force=True)  # shapes differ: never loaded
    assert all(np.array_equal(before[k], v) for k, v in model.parameters().items())


def test_force_loads_weights_that_fit_with_a_warning(tmp_path):
    model = cnndsl.compile(TINY)
    model.save(tmp_path / "w.npz")
    tanh = cnndsl.compile(TINY.replace("ReLU", "Tanh"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tanh.load_weights(tmp_path / "w.npz", force=True)
    assert len(caught) == 1 and "relu1 is ReLU in w.npz but Tanh here" in str(caught[0].message)
    assert "force=True" in str(caught[0].message)
    assert caught[0].filename == __file__  # the user's line, not cnndsl's
    assert np.array_equal(tanh.parameters()["conv1.weight"], model.parameters()["conv1.weight"])


def test_the_seed_defaults_to_the_train_blocks():
    seeded = TINY.replace("epochs = 3", "epochs = 3, seed = 7")
    default = cnndsl.compile(seeded).parameters()["conv1.weight"]
    assert np.array_equal(default, cnndsl.compile(seeded, seed=7).parameters()["conv1.weight"])
    assert not np.array_equal(default, cnndsl.compile(seeded, seed=0).parameters()["conv1.weight"])


# ---- datasets -------------------------------------------------------------------------------------

def test_datasets_load_reads_what_data_takes(tmp_path):
    (x, y), (xt, yt) = synthetic(50, 0), synthetic(20, 1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt,
             classes=np.array(["row", "column", "diagonal"]))
    data = cnndsl.datasets.load(tmp_path / "d.npz")
    assert isinstance(data, cnndsl.data.Dataset)
    assert np.array_equal(data.x_train, x) and np.array_equal(data.y_test, yt)
    assert data.classes == ["row", "column", "diagonal"] and data.spec == str(tmp_path / "d.npz")
    small = cnndsl.datasets.load(tmp_path / "d.npz", limit=10, seed=2)
    assert (len(small.x_train), len(small.x_test), small.limit) == (10, 10, 10)
    keep = np.sort(np.random.default_rng(2).permutation(50)[:10])  # as --limit 10 --seed 2
    assert np.array_equal(small.y_train, y[keep])
    with pytest.raises(DataError, match="no such file or folder"):
        cnndsl.datasets.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="limit must be 0"):
        cnndsl.datasets.load(tmp_path / "d.npz", limit=-1)


def test_the_front_end_stays_light():
    """`import cnndsl` and checking a file load no numba; the API modules come on first use."""
    code = ("import sys, cnndsl; cnndsl.check_file(sys.argv[1]); cnndsl.datasets; "
            "cnndsl.display; print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(LENET)], capture_output=True,
                          text=True, cwd=ROOT, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "False"
