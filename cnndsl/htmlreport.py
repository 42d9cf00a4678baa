"""`cnndsl report`: one self-contained HTML page that shows a network.

The page holds the `render` diagram as inline SVG (hovering a layer shows its arguments,
output shape, padding, receptive field, jump, parameters, MACs and activation memory), the
layer table of `cnndsl check`, and, when given, the first conv layer's filters and the
feature maps of one input as PNG images in `data:` URIs. Everything is inline (CSS, SVG,
images, a few lines of script): the file opens from disk with no server and makes no
network request. Every string that comes from a user (file names, network and layer
names, notes) is HTML-escaped here.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from dataclasses import dataclass, field

import networkx as nx

from cnndsl.memory import format_bytes
from cnndsl.ops import OPS
from cnndsl.summary import human_count, op_text, padding_text

COLLAPSE_ABOVE = 150  # layers; above this the diagram draws each repetition once
FAMILY_NAMES = {
    "io": "input / output", "conv": "convolution", "pool": "pooling",
    "dense": "fully connected", "activation": "activation", "norm": "normalisation",
    "merge": "merge (concat, sum)", "shape": "reshape", "other": "other",
}


@dataclass
class Pictures:
    """What the weights show, as PNG bytes. `weights` says where they come from
    ("trained weights from f.npz" or "initial weights (untrained, seed 0)"); `input_label`
    says what the input is (a file name, a dataset image); `feature_maps` holds
    (layer name, output shape, PNG) per conv/pool layer, in network order."""

    weights: str
    trained: bool
    filters: bytes | None = None
    filters_layer: str = ""
    input_image: bytes | None = None
    input_label: str = ""
    feature_maps: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # shown above the pictures


def build_report(graph: nx.DiGraph, source: str, pictures: Pictures | None = None,
                 collapse: bool | None = None) -> str:
    """The HTML page of a shape-checked IR graph read from the file named `source`.
    `collapse` draws each repetition once (default: when the network has more than
    COLLAPSE_ABOVE layers)."""
    from cnndsl import __version__
    from cnndsl.summary import to_json

    summary = to_json(graph)
    rows = [layer_facts(row, graph.nodes[row["name"]]) for row in summary["layers"]]
    if collapse is None:
        collapse = len(rows) > COLLAPSE_ABOVE
    title = f"{summary['name']} — cnndsl report"
    parts = [
        _header(graph, summary, rows, source, pictures is not None),
        _diagram_section(graph, rows, collapse),
        table_section(graph, summary, rows),
    ]
    if pictures is not None:
        parts.append(_pictures_section(pictures))
    footer = (f"<footer>Made by cnndsl {escape(__version__)} from <code>{escape(source)}</code>. "
              "This page is self-contained: it loads nothing from the network.</footer>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # no page may load anything: a browser refuses requests the page itself makes
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts) + f"\n{footer}\n<div id=\"tip\" hidden></div>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def escape(text) -> str:
    """Text safe inside HTML elements and attribute values."""
    return html.escape(str(text), quote=True)


# ---- facts per layer --------------------------------------------------------------------

def layer_facts(row: dict, node: dict) -> dict:
    """The JSON row, plus the resolved op text, the family and whether the layer slides a
    window (only those show their padding, as in `cnndsl check --rf`)."""
    filled = dict(row)
    filled["op_text"] = op_text(node)
    filled["family"] = OPS[node["op"]].family
    filled["windowed"] = node["windowed"]
    return filled


def shape_text(shape) -> str:
    return "×".join(str(s) for s in shape)


def _padding(row: dict) -> str:
    return padding_text(row["padding"]) if row["windowed"] else ""


def tooltip_text(row: dict, repeated: str = "") -> str:
    """The lines shown when the pointer rests on a layer in the diagram."""
    lines = [f"{row['name']}: {row['op_text']}", f"output {shape_text(row['shape'])}"]
    if _padding(row):
        lines.append(f"padding {_padding(row)} (per axis; before+after where they differ)")
    if row.get("receptive_field"):
        lines.append(f"receptive field {shape_text(row['receptive_field'])}"
                     + (f", jump {shape_text(row['jump'])}" if row.get("jump") else ""))
    lines.append(f"params {row['params']:,} · MACs {row['macs']:,}")
    if row.get("memory") is not None:
        lines.append(f"activations {format_bytes(row['memory'])} per example")
    if repeated:
        lines.append(repeated)
    return "\n".join(lines)


# ---- header -----------------------------------------------------------------------------

def _header(graph, summary: dict, rows: list[dict], source: str, pictures: bool) -> str:
    facts = [("input", shape_text(summary["input"])), ("output", shape_text(summary["output"])),
             ("layers", f"{len(rows):,}"), ("parameters", f"{summary['params']:,}"),
             ("MACs per example", f"{summary['macs']:,} ({human_count(summary['macs'])})")]
    depth = summary.get("depth", graph.graph.get("depth"))
    if depth is not None:
        facts.append(("depth", f"{depth} (conv/FC layers on the longest path)"))
    memory = summary.get("memory")
    if isinstance(memory, dict) and memory.get("forward_per_example") is not None:
        per_example = format_bytes(memory["forward_per_example"])
        facts.append(("activations", f"{per_example} per example (forward)"))
    bindings = graph.graph.get("bindings") or {}
    if bindings:
        facts.append(("bindings", ", ".join(f"{k} = {v}" for k, v in bindings.items())))
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in facts)
    return (f"<header><h1>{escape(summary['name'])}</h1>\n"
            f"<p class=\"source\">cnndsl report of <code>{escape(source)}</code></p>\n"
            f"<dl class=\"facts\">{items}</dl>\n"
            "<nav><a href=\"#diagram\">Diagram</a> <a href=\"#layers\">Layers</a> "
            + ("<a href=\"#inside\">Filters and feature maps</a>" if pictures else "")
            + "</nav></header>")


# ---- diagram ----------------------------------------------------------------------------

def _diagram_section(graph, rows: list[dict], collapse: bool) -> str:
    svg, note = diagram_svg(graph, rows, collapse)
    families = []
    for name, node in graph.nodes(data=True):
        family = OPS[node["op"]].family
        if family not in families:
            families.append(family)
    body = f"<div class=\"svgbox\">{svg}</div>" if svg else ""
    note_html = f"<p class=\"note\">{escape(note)}</p>" if note else ""
    return (f"<section id=\"diagram\"><h2>Diagram</h2>\n{note_html}"
            "<p class=\"hint\">Rest the pointer on a layer to see its arguments, output "
            "shape, receptive field, parameters and MACs; click it to find its row in the "
            f"table. Each arrow carries the shape it transports.</p>\n{legend_html(families)}\n"
            f"{body}</section>")


def diagram_svg(graph, rows: list[dict], collapse: bool) -> tuple[str, str]:
    """(inline SVG, note): the `render` diagram with a tooltip per layer; ('', why) when
    it cannot be drawn (no graphviz, or too many layers even collapsed)."""
    import graphviz

    from cnndsl.errors import GraphError
    from cnndsl.render import OUTPUT_NODE, _representatives, to_dot

    shown = _representatives(graph) if collapse else {n: n for n in graph.nodes}
    copies = {}
    for name, drawn in shown.items():
        copies[drawn] = copies.get(drawn, 0) + 1
    tooltips = {OUTPUT_NODE: f"output {shape_text(graph.nodes[graph.graph['output']]['shape'])}"}
    for name, node in graph.nodes(data=True):
        if OPS[node["op"]].is_input:
            tooltips[name] = f"{name}: input {shape_text(node['shape'])}"
    for row in rows:
        if shown[row["name"]] == row["name"]:
            more = copies[row["name"]] - 1
            tooltips[row["name"]] = tooltip_text(row, _repeated_note(more))
    try:
        svg = to_dot(graph, collapse=collapse, tooltips=tooltips).pipe(format="svg",
                                                                     quiet=True)
    except graphviz.ExecutableNotFound:
        return "", ("The diagram needs graphviz's 'dot' program, which is not installed "
                    "(Debian/Ubuntu: apt-get install graphviz).")
    except GraphError as error:
        return "", f"No diagram: {error.message}."
    except graphviz.CalledProcessError as error:  # names the DOT language cannot carry
        return "", f"No diagram: graphviz failed ({error.stderr.decode(errors='replace')})."
    merged = any(count > 1 for count in copies.values())
    note = "Each repetition is drawn once (the network is large); the table lists every " \
           "layer." if merged else ""
    return inline_svg(svg.decode("utf-8")), note


def _repeated_note(more: int) -> str:
    if not more:
        return ""
    return f"drawn once for {more + 1} layers (the repetitions differ in receptive field " \
           "and jump; see the table)"


def inline_svg(svg: str) -> str:
    """Graphviz's SVG document as an element to put in HTML: without the XML prolog,
    the DOCTYPE and the comments (which repeat node names)."""
    svg = re.sub(r"<\?xml.*?\?>", "", svg, flags=re.DOTALL)
    svg = re.sub(r"<!DOCTYPE.*?>", "", svg, flags=re.DOTALL)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.DOTALL)
    # the graph's own title would be the tooltip of the whole background
    svg = re.sub(r"(<g id=\"graph0\"[^>]*>\s*)<title>.*?</title>", r"\1", svg, count=1,
                 flags=re.DOTALL)
    return svg.strip()


def legend_html(families: list[str]) -> str:
    from cnndsl.render import FAMILY_COLOURS

    items = "".join(
        f"<li><span class=\"swatch\" style=\"background:{FAMILY_COLOURS.get(f, '#fff')}\">"
        f"</span>{escape(FAMILY_NAMES.get(f, f))}</li>" for f in families)
    return f"<ul class=\"legend\">{items}</ul>"


# ---- the layer table --------------------------------------------------------------------

def table_section(graph, summary: dict, rows: list[dict]) -> str:
    from cnndsl.render import FAMILY_COLOURS

    columns = [("layer", "", None), ("op", "", None), ("output", "", None)]
    optional = [("padding", "padding per axis; before+after where they differ", "padding"),
                ("receptive field", "input pixels that reach one output, per axis",
                 "receptive_field"),
                ("jump", "input pixels between neighbouring outputs", "jump"),
                ("activations", "output bytes per example (forward)", "memory")]
    columns += [c for c in optional if any(c[2] in row for row in rows)]
    columns += [("params", "", None), ("MACs", "multiply-accumulates per example", None)]
    head = "".join(_th(name, tip, numeric=i >= 3) for i, (name, tip, _) in enumerate(columns))
    keys = [c[2] for c in columns]
    body = []
    for row in rows:
        colour = FAMILY_COLOURS.get(row["family"], "#fff")
        swatch = f"<span class=\"swatch\" style=\"background:{colour}\"></span>"
        cells = [f"<td>{swatch}{escape(row['name'])}</td>",
                 f"<td class=\"op\">{escape(row['op_text'])}</td>",
                 f"<td class=\"shape\">{escape(shape_text(row['shape']))}</td>"]
        for key in keys[3:-2]:
            cells.append(f"<td class=\"num\">{escape(_fact(row, key))}</td>")
        cells.append(f"<td class=\"num\">{row['params']:,}</td>")
        cells.append(f"<td class=\"num\">{row['macs']:,}</td>")
        body.append(f"<tr id=\"layer-{escape(row['name'])}\">{''.join(cells)}</tr>")
    totals = (f"<tr class=\"total\"><td colspan=\"{len(columns) - 2}\">total</td>"
              f"<td class=\"num\">{summary['params']:,}</td>"
              f"<td class=\"num\">{summary['macs']:,}</td></tr>")
    return (f"<section id=\"layers\"><h2>Layers</h2>\n<table>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + f"\n</tbody>\n<tfoot>{totals}</tfoot>\n</table></section>")


def _th(name: str, tip: str, numeric: bool) -> str:
    title = f" title=\"{escape(tip)}\"" if tip else ""
    kind = " class=\"num\"" if numeric else ""
    return f"<th{kind}{title}>{escape(name)}</th>"


def _fact(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if key == "padding":
        return _padding(row)
    if key == "memory":
        return format_bytes(value)
    return shape_text(value)


# ---- filters and feature maps -----------------------------------------------------------

def _pictures_section(pictures: Pictures) -> str:
    """The pictures carry their own titles (layer, arguments, shape, scale); the page adds
    where the weights come from."""
    state = "trained" if pictures.trained else "untrained"
    parts = [f"<p class=\"weights {state}\">{escape(pictures.weights)}</p>"]
    parts += [f"<p class=\"note\">{escape(note)}</p>" for note in pictures.notes]
    if pictures.filters:
        layer = pictures.filters_layer or "the first conv layer"
        caption = f"The filters of {layer}" + (
            ", as trained." if pictures.trained else
            ": untrained, random initial values (no pattern is expected).")
        parts.append(f"<h3>Filters</h3>\n<p class=\"hint\">{escape(caption)}</p>\n"
                     f"<figure>{_img(pictures.filters, caption, 240)}</figure>")
    if pictures.feature_maps or pictures.input_image:
        figures = []
        if pictures.input_image:
            label = f"input: {pictures.input_label}"
            figures.append(f"<figure>{_img(pictures.input_image, label, 160)}</figure>")
        for layer, shape, png in pictures.feature_maps:
            alt = f"feature maps of {layer}, {shape_text(shape)}"
            figures.append(f"<figure>{_img(png, alt, 160)}</figure>")
        parts.append("<h3>Feature maps</h3>\n<p class=\"hint\">The output of every conv and "
                     "pool layer for one input (a conv's output before the ReLU after it), "
                     "one tile per channel.</p>\n"
                     f"<div class=\"maps\">{''.join(figures)}</div>")
    else:
        parts.append("<p class=\"hint\">Give an input (IMAGE, or --index N --data D) to "
                     "see the feature maps it produces layer by layer.</p>")
    return ("<section id=\"inside\"><h2>Filters and feature maps</h2>\n"
            + "\n".join(parts) + "</section>")


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def _img(png: bytes, alt: str, min_width: int) -> str:
    """An <img> of the PNG as a data: URI; a small picture is enlarged by a whole factor,
    drawn with square sharp pixels."""
    width, height = png_size(png)
    scale = max(1, -(-min_width // max(width, 1)))
    data = base64.b64encode(png).decode("ascii")
    sharp = " class=\"pixels\"" if scale > 1 else ""
    return (f"<img{sharp} src=\"data:image/png;base64,{data}\" alt=\"{escape(alt)}\" "
            f"width=\"{width * scale}\" height=\"{height * scale}\">")


# ---- the page's own style and script ------------------------------------------------------

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa;
  --accent: #3d85c6; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 24px 28px 40px; color: var(--ink);
  background: var(--bg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
h1 { font-size: 30px; margin: 0 0 2px; }
h2 { font-size: 21px; margin: 34px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 6px; }
code, .op, .shape, .num, #tip { font-family: ui-monospace, "SFMono-Regular", Menlo,
  Consolas, "DejaVu Sans Mono", monospace; font-size: 13px; }
.source { margin: 0 0 14px; color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 8px 10px; margin: 0 0 12px; }
.facts div { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px 12px; }
.facts dt { font-size: 12px; color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.hint, .note { color: var(--muted); margin: 4px 0 10px; }
.note { color: #7a4b00; background: #fff8e6; border-left: 3px solid #e0a800;
  padding: 4px 10px; }
.legend { list-style: none; padding: 0; margin: 0 0 10px; display: flex; flex-wrap: wrap;
  gap: 4px 18px; font-size: 13px; color: var(--muted); }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
  border: 1px solid #777; border-radius: 3px; vertical-align: -1px; }
.svgbox { overflow: auto; max-height: 85vh; border: 1px solid var(--line);
  border-radius: 6px; padding: 8px; text-align: center; }
.svgbox svg { max-width: 100%; height: auto; }
.svgbox g.node { cursor: pointer; }
/* graphviz names a bold font the browser lacks; ask for the family and the weight */
.svgbox text[font-family="Helvetica Bold"] { font-family: Helvetica, Arial, "DejaVu Sans",
  sans-serif; font-weight: bold; }
.svgbox g.node:hover path, .svgbox g.node:hover polygon,
.svgbox g.node:hover ellipse { stroke: var(--accent); stroke-width: 2.5; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { position: sticky; top: 0; background: #eef2f6; text-align: left; font-weight: 600;
  padding: 6px 8px; border-bottom: 2px solid var(--line); white-space: nowrap; }
th[title] { text-decoration: underline dotted; cursor: help; }
td { padding: 3px 8px; border-bottom: 1px solid #eaeef2; white-space: nowrap; }
td.op { white-space: normal; min-width: 14em; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover, tbody tr:target { background: #ddebf7; }
td.num, th.num { text-align: right; }
tfoot td { font-weight: 600; border-top: 2px solid var(--line); }
.weights { font-weight: 600; }
.weights.untrained { color: #7a4b00; }
.maps { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0 0 8px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
img.pixels { image-rendering: pixelated; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
#tip { position: fixed; z-index: 10; pointer-events: none; white-space: pre;
  background: #1f2328; color: #fff; padding: 8px 10px; border-radius: 6px;
  box-shadow: 0 4px 14px rgba(0, 0, 0, .25); line-height: 1.45; }
"""

# The browser's own tooltip (the SVG's xlink:title) works without this script; with it, the
# text shows at once in a styled box, and a click jumps to the layer's table row.
SCRIPT = r"""
(function () {
  var XLINK = "http://www.w3.org/1999/xlink", tip = document.getElementById("tip");
  function place(event) {
    var x = event.clientX + 16, y = event.clientY + 16, box = tip.getBoundingClientRect();
    if (x + box.width > innerWidth) x = Math.max(4, event.clientX - box.width - 16);
    if (y + box.height > innerHeight) y = Math.max(4, event.clientY - box.height - 16);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  document.querySelectorAll("#diagram g.node").forEach(function (node) {
    var link = node.querySelector("a"), name = node.querySelector("title");
    if (!link || !name) return;
    var text = link.getAttributeNS(XLINK, "title") || "";
    link.removeAttributeNS(XLINK, "title");
    name.remove();
    node.dataset.tip = text;
    node.dataset.layer = name.textContent;
    var lines = text.split("\n");
    node.addEventListener("mouseenter", function (e) {
      var head = document.createElement("strong");
      head.textContent = lines[0];
      tip.replaceChildren(head, "\n" + lines.slice(1).join("\n"));
      tip.hidden = false; place(e); });
    node.addEventListener("mousemove", place);
    node.addEventListener("mouseleave", function () { tip.hidden = true; });
    node.addEventListener("click", function () {
      var row = document.getElementById("layer-" + node.dataset.layer);
      if (row) location.hash = row.id; });
  });
})();
"""
