"""`cnndsl report`: one self-contained HTML page, checked as text and in a real browser.

The browser tests run Debian's `chromium` headless (skipped where it is not installed):
a screenshot must show the page (the diagram's boxes in their colours), and a probe script
in a copy of the page must see no network request and the layer tooltip on hover.
"""

import base64
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import networkx as nx
import numpy as np
import pytest
from conftest import EXAMPLES

import cnndsl
from cnndsl import checkpoint
from cnndsl.cli import main
from cnndsl.htmlreport import build_report
from cnndsl.model import Model
from cnndsl.render import FAMILY_COLOURS
from cnndsl.summary import to_json

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="the graphviz 'dot' program is not installed")
SVG = "{http://www.w3.org/2000/svg}"
XLINK_TITLE = "{http://www.w3.org/1999/xlink}title"
TINY = """network Tiny
input 12x12x1
c1: Conv(4, 3x3) -> ReLU -> MaxPool(2) -> Conv(6, 3x3) -> ReLU -> FC(5) -> Softmax
"""
TINY_FEATURE_LAYERS = ["c1", "maxpool1", "conv1"]  # conv and pool layers, in order


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def report(tmp_path, *args, name="net.html"):
    """(exit status, the page or None, the output path)."""
    out = tmp_path / name
    status = main(["report", *map(str, args), "-o", str(out)])
    return status, (out.read_text(encoding="utf-8") if out.exists() else None), out


def svg_root(page: str) -> ET.Element:
    """The inline SVG of the page, parsed as XML (it must be well-formed)."""
    match = re.search(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    assert match, "no inline <svg> in the page"
    return ET.fromstring(match.group(0))


def node_tooltips(page: str) -> dict[str, str]:
    """{layer name: tooltip text} of every layer box in the diagram."""
    tips = {}
    for group in svg_root(page).iter(f"{SVG}g"):
        if group.get("class") == "node":
            link = group.find(f".//{SVG}a")
            tips[group.find(f"{SVG}title").text] = link.get(XLINK_TITLE) if link is not None \
                else None
    return tips


def images(page: str) -> list[bytes]:
    """The bytes of every data: PNG in the page, checked to be PNGs."""
    found = [base64.b64decode(data) for data in
             re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in found)
    return found


FETCHING = ("src", "href", "xlink:href", "srcset", "action", "poster", "data", "background",
            "formaction")


class References(HTMLParser):
    """Every attribute of the page that could make a browser fetch something."""

    def __init__(self):
        super().__init__()
        self.found, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.found += [(tag, key, value) for key, value in attrs if key in FETCHING]


def external_references(page: str) -> list:
    parser = References()
    parser.feed(page)
    refs = [(tag, key, value) for tag, key, value in parser.found
            if not (value or "").startswith(("data:image/png;base64,", "#"))]
    style = " ".join(re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL))
    refs += [("style", "url/import", m) for m in re.findall(r"url\(|@import", style)]
    refs += [("tag", tag, "") for tag in parser.tags if tag in ("link", "iframe", "object",
                                                                "embed", "base")]
    return refs


# ---- the page as text --------------------------------------------------------------------

@needs_dot
def test_page_is_one_file_with_nothing_to_fetch(tmp_path):
    status, page, _ = report(tmp_path, EXAMPLES / "lenet5.cnn")
    assert status == 0
    assert external_references(page) == []
    namespaces = ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink")
    assert not re.findall(r"\w+://", re.sub("|".join(namespaces), "", page))
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page  # the SVG is inlined
    assert page.count("<script>") == 1 and "<script src" not in page
    assert "default-src 'none'" in page  # and the browser is told to load nothing


@needs_dot
def test_every_layer_has_a_tooltip_with_its_facts(tmp_path):
    status, page, _ = report(tmp_path, EXAMPLES / "lenet5.cnn")
    assert status == 0
    graph = cnndsl.check_file(str(EXAMPLES / "lenet5.cnn"))
    tips = node_tooltips(page)
    for name, node in graph.nodes(data=True):
        if node["op"] == "Input":
            continue
        tip = tips[name]
        rf = "×".join(map(str, node["receptive_field"]))
        assert tip.startswith(f"{name}: ")
        assert f"output {'×'.join(map(str, node['shape']))}" in tip
        assert f"receptive field {rf}" in tip
        assert f"params {node['params_count']:,} · MACs {node['macs']:,}" in tip
    # hand-derived: LeNet-5's c3 (5x5 after 5x5 conv and 2x2 pool) sees 14x14 pixels
    assert "receptive field 14×14, jump 2×2" in tips["c3"]
    assert "padding 0 " in tips["c1"]  # a valid convolution pads nothing
    assert "padding" not in tips["tanh1"]  # no window, no padding


@needs_dot
def test_table_has_a_row_per_layer_and_the_totals(tmp_path):
    status, page, _ = report(tmp_path, EXAMPLES / "fashion_2conv.cnn")
    assert status == 0
    summary = to_json(cnndsl.check_file(str(EXAMPLES / "fashion_2conv.cnn")))
    rows = re.findall(r'<tr id="layer-([^"]+)">(.*?)</tr>', page)
    assert [name for name, _ in rows] == [layer["name"] for layer in summary["layers"]]
    cells = dict(rows)
    assert "Conv(32, 3x3, bias=false)" in cells["conv1"]
    assert "28×28×32" in cells["conv1"] and ">1<" in cells["conv1"]  # padding 1 per side
    assert ">3×3<" in cells["conv1"] and ">16×16<" in cells["maxpool2"]  # receptive fields
    assert f">{summary['params']:,}<" in page and f">{summary['macs']:,}<" in page
    assert "<dt>depth</dt><dd>6 " in page


def test_hostile_names_are_escaped(tmp_path):
    graph = cnndsl.check_text(TINY)
    graph.graph["name"] = "x</title><script>alert(1)</script>"
    hostile = 'c<1>&"x\'<img src=x onerror=alert(2)>'
    graph = nx.relabel_nodes(graph, {"c1": hostile})
    graph.nodes["relu1"]["inputs"] = [hostile]
    page = build_report(graph, "<b>file</b>.cnn")
    assert page.count("<script>") == 1  # the page's own
    assert "<img src=x" not in page and "<b>file" not in page
    assert html.escape(hostile) in page and "&lt;b&gt;file&lt;/b&gt;.cnn" in page
    if shutil.which("dot"):
        assert hostile in node_tooltips(page)  # the SVG carries it as text, intact


def test_hostile_file_names_are_escaped(tmp_path):
    path = write(tmp_path / '<i onmouseover="x">&.cnn', TINY)
    image = tmp_path / "<img src=q onerror=alert(1)>.png"
    from PIL import Image

    Image.fromarray(np.zeros((12, 12), np.uint8)).save(image)
    status, page, _ = report(tmp_path, path, image)
    assert status == 0
    assert '<i onmouseover="x">' not in page and "<img src=q" not in page
    assert "&lt;i onmouseover=&quot;x&quot;&gt;&amp;.cnn" in page


@needs_dot
def test_weights_and_an_image_give_filters_and_feature_maps(tmp_path):
    from PIL import Image

    from cnndsl import show

    model = Model(cnndsl.check_text(TINY), seed=7)
    weights = tmp_path / "w.npz"
    checkpoint.save(str(weights), model, meta={"architecture": TINY, "data": "tiny-set"})
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    net = write(tmp_path / "tiny.cnn", TINY)

    status, page, _ = report(tmp_path, net, "--weights", tmp_path / "w.npz",
                             tmp_path / "in.png")
    assert status == 0
    pngs = images(page)
    assert pngs[0] == show.filter_grid_png(model)  # the filters of these weights
    assert pngs[0] != show.filter_grid_png(Model(cnndsl.check_text(TINY), seed=0))
    assert len(pngs) == 1 + 1 + len(TINY_FEATURE_LAYERS)  # filters, input, maps
    for png in pngs:
        assert Image.open(io.BytesIO(png)).size[0] > 100
    assert f"Trained weights from {weights} (trained on tiny-set)" in page
    for layer in TINY_FEATURE_LAYERS:
        assert f'alt="feature maps of {layer}, ' in page
    assert "Initial weights" not in page and "untrained," not in page


@needs_dot
def test_without_weights_the_filters_are_labelled_untrained(tmp_path):
    status, page, _ = report(tmp_path, write(tmp_path / "tiny.cnn", TINY))
    assert status == 0
    assert len(images(page)) == 1  # the filters; no input, so no feature maps
    assert "Initial weights (untrained, seed 0)" in page and "untrained, random" in page
    assert "Give an input (IMAGE, or --index N --data D)" in page


@needs_dot
def test_a_large_network_is_drawn_collapsed(tmp_path):
    text = "input 8x8x1\n(Conv(2, 3) -> ReLU) * 80 -> FC(3)\n"
    status, page, _ = report(tmp_path, write(tmp_path / "deep.cnn", text))
    assert status == 0
    tips = node_tooltips(page)
    assert len(tips) < 10  # 161 layers drawn as a handful of boxes
    assert "drawn once for 80 layers" in tips["conv1"]
    assert page.count('<tr id="layer-') == 161  # the table keeps every one
    status, page, _ = report(tmp_path, tmp_path / "deep.cnn", "--no-collapse",
                             name="full.html")
    assert status == 0 and len(node_tooltips(page)) == 163  # with input and output


# ---- errors: exit 1 (a user's mistake) or 2 (a usage error), nothing written --------------

def test_a_shape_error_writes_nothing(tmp_path, capsys):
    net = write(tmp_path / "bad.cnn", "input 8x8x1\nConv(4, 3) -> MaxPool(16)\n")
    status, page, _ = report(tmp_path, net)
    assert status == 1 and page is None
    assert not list(tmp_path.glob("*.html*")) and not list(tmp_path.glob(".*.tmp"))
    err = capsys.readouterr().err
    assert "bad.cnn:2:15: error: MaxPool" in err and "Traceback" not in err


def test_missing_weights_or_image_write_nothing(tmp_path, capsys):
    net = write(tmp_path / "tiny.cnn", TINY)
    status, page, _ = report(tmp_path, net, "--weights", tmp_path / "nope.npz")
    assert status == 1 and page is None
    status, page, _ = report(tmp_path, net, tmp_path / "nope.png")
    assert status == 1 and page is None
    assert "nope.png: no such file" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.html"))


def test_image_and_index_together_is_a_usage_error(tmp_path):
    net = write(tmp_path / "tiny.cnn", TINY)
    with pytest.raises(SystemExit) as stop:
        main(["report", str(net), "x.png", "--index", "0", "--data", "mnist",
              "-o", str(tmp_path / "r.html")])
    assert stop.value.code == 2
    assert not (tmp_path / "r.html").exists()


# ---- in a real browser ------------------------------------------------------------------

BROWSER_TIMEOUT = 90  # seconds; a first start on a cold machine takes a few


def browser() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium installed (Debian: apt-get install chromium); the browser "
                "tests need it")


def run_browser(tmp_path, *args) -> str:
    """Run headless chromium on `args`, with its own profile and no name resolution (so
    even a request the probe missed could not reach the network); its stdout. The whole
    process group is killed on timeout, so no renderer outlives the test."""
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'profile'}",
               "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, text=True)
    try:
        out, err = process.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT} s")
    assert process.returncode == 0, err[-2000:]
    return out


@needs_dot
def test_browser_screenshot_shows_the_page(tmp_path):
    from PIL import Image

    browser()
    status, _, out = report(tmp_path, EXAMPLES / "lenet5.cnn")
    assert status == 0
    shot = tmp_path / "shot.png"
    run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    pixels = np.asarray(image).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 200  # text, boxes, colours: not a blank page
    assert (pixels.min(axis=1) < 200).mean() > 0.01  # ink, not an all-white page
    below = np.asarray(image)[500:].reshape(-1, 3)  # the diagram, below the header
    for family in ("conv", "pool", "activation"):  # its boxes, filled with their colours
        colour = np.array([int(FAMILY_COLOURS[family][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(below.astype(int) - colour).max(axis=1) <= 2).sum() > 200, family


PROBE = """<script>
window.addEventListener("load", function () {
  var node = Array.from(document.querySelectorAll("#diagram g.node"))
    .find(function (n) { return n.dataset.layer === "c3"; });
  node.dispatchEvent(new MouseEvent("mouseenter", {clientX: 50, clientY: 50}));
  var tip = document.getElementById("tip");
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    requests: performance.getEntriesByType("resource").map(function (e) { return e.name; }),
    tip: tip.textContent, tipShown: !tip.hidden,
    images: Array.from(document.images).map(function (i) { return i.naturalWidth; })});
  document.body.appendChild(out);
});
</script>"""


@needs_dot
def test_browser_makes_no_request_and_shows_the_tooltip(tmp_path):
    """A copy of the page without its Content-Security-Policy (which would hide a
    request by refusing it) and with a probe script: after loading, the browser's
    Resource Timing lists every fetch the page made (data: URIs are not fetches)."""
    browser()
    status, page, _ = report(tmp_path, EXAMPLES / "lenet5.cnn")
    assert status == 0
    page, policies = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    assert policies == 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_browser(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.DOTALL)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["requests"] == []
    assert result["tipShown"] and result["tip"].startswith("c3: Conv(16, 5x5")
    assert "receptive field 14×14" in result["tip"] and "MACs 241,600" in result["tip"]
    assert result["images"] and all(width > 0 for width in result["images"])  # decoded
