"""A network shown in Python and Jupyter: `Model.summary()`, and the `_repr_svg_` /
`_repr_html_` of a `Model` and of a checked graph (`cnndsl.ir.Network`), one function
each here for both.

Nothing is written to disk: the diagram is `cnndsl render`'s (graphviz's `dot` run on a
pipe), the table `cnndsl check`'s; the HTML reuses the pieces of `cnndsl report`'s page
(cnndsl.htmlreport) under a style scoped to the output, so it does not restyle the
notebook around it.
"""

from __future__ import annotations

import re

import networkx as nx


class Summary(str):
    """The `cnndsl check` table: a str that shows as the table itself when it is the value
    of a REPL line or a notebook cell (not as a quoted string with \\n)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


def summary(graph: nx.DiGraph, json: bool = False, rf: bool = False, memory: bool = False,
            batch: int | None = None):
    """`cnndsl check`'s table of a checked graph (`rf`, `memory`: its --rf and --memory
    columns; `batch`: the batch of the training-step memory line, default the file's train
    block's, else 64), or with `json` the dict `check --json` prints."""
    from cnndsl.summary import Columns, format_table, to_json

    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                              or batch < 1):
        raise ValueError(f"batch must be a whole number >= 1, got {batch!r}")
    if json:
        return to_json(graph, batch)
    return Summary(format_table(graph, Columns(rf=rf, memory=memory), batch))


def _checked(graph: nx.DiGraph) -> bool:
    """Shape-checked to the end (not a graph stopped at a shape error, `error.graph`)."""
    return "error" not in graph.graph and all("shape" in node for _, node in
                                              graph.nodes(data=True))


def _rows(graph: nx.DiGraph) -> tuple[dict, list[dict]]:
    from cnndsl.htmlreport import layer_facts
    from cnndsl.summary import to_json

    facts = to_json(graph)
    return facts, [layer_facts(row, graph.nodes[row["name"]]) for row in facts["layers"]]


def _collapse(graph: nx.DiGraph) -> bool:
    from cnndsl.htmlreport import COLLAPSE_ABOVE

    return graph.number_of_nodes() - 1 > COLLAPSE_ABOVE  # the input is no layer


def svg(graph: nx.DiGraph) -> str | None:
    """The `cnndsl render` diagram as SVG text (each repetition drawn once above 150
    layers; a tooltip per layer), or None when it cannot be drawn (graphviz's `dot` is
    not installed, or too many layers): Jupyter then shows the next representation."""
    if _checked(graph):
        from cnndsl.htmlreport import diagram_svg

        drawn, _ = diagram_svg(graph, _rows(graph)[1], _collapse(graph))
        return drawn or None
    return _partial_svg(graph)


def _partial_svg(graph: nx.DiGraph) -> str | None:
    """A graph checked up to a shape error, drawn up to it (the failing layer in red)."""
    import graphviz

    from cnndsl.errors import GraphError
    from cnndsl.htmlreport import inline_svg
    from cnndsl.render import to_dot

    try:
        return inline_svg(to_dot(graph, collapse=_collapse(graph)).pipe(
            format="svg", quiet=True).decode("utf-8"))
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError, GraphError):
        return None


def html(graph: nx.DiGraph) -> str:
    """A one-line summary, the diagram (with its legend) and the layer table, as one
    HTML fragment with its own scoped style."""
    from cnndsl import htmlreport

    if not _checked(graph):
        return _partial_html(graph)
    facts, rows = _rows(graph)
    drawn, note = htmlreport.diagram_svg(graph, rows, _collapse(graph))
    families = list(dict.fromkeys(row["family"] for row in rows))
    parts = [_headline(facts, len(rows))]
    if note:
        parts.append(f"<p class=\"note\">{htmlreport.escape(note)}</p>")
    if drawn:
        parts += [htmlreport.legend_html(["io", *families]), f"<div class=\"svgbox\">{drawn}</div>"]
    parts.append(htmlreport.table_section(graph, facts, rows))
    return _fragment(parts)


def _headline(facts: dict, layers: int) -> str:
    from cnndsl.htmlreport import escape, shape_text
    from cnndsl.summary import human_count

    return (f"<p class=\"headline\"><strong>{escape(facts['name'])}</strong>: input "
            f"{escape(shape_text(facts['input']))} → output {escape(shape_text(facts['output']))}"
            f" · {layers:,} layers · {facts['params']:,} parameters · "
            f"{human_count(facts['macs'])} MACs per example</p>")


def _partial_html(graph: nx.DiGraph) -> str:
    from cnndsl.htmlreport import escape
    from cnndsl.summary import format_partial_table

    drawn = _partial_svg(graph)
    parts = [f"<div class=\"svgbox\">{drawn}</div>"] if drawn else []
    text = format_partial_table(graph)
    error = graph.graph.get("error")
    if error is not None:  # the table points at it: "<-- the error below"
        text += "\n" + str(error)
    parts.append(f"<pre>{escape(text)}</pre>")
    return _fragment(parts)


SCOPE = "cnndsl-network"


def _fragment(parts: list[str]) -> str:
    from cnndsl.htmlreport import CSS

    return (f"<div class=\"{SCOPE}\"><style>{scoped_css(CSS, '.' + SCOPE)}"
            f"{EXTRA_CSS}</style>\n" + "\n".join(parts) + "\n</div>")


#: what a notebook output needs beyond the page's style: no page margins, a shorter box
EXTRA_CSS = (f".{SCOPE} {{ max-width: none; margin: 0; padding: 4px 0; }}"
             f" .{SCOPE} .svgbox {{ max-height: 70vh; }}"
             f" .{SCOPE} .headline {{ margin: 0 0 8px; }}"
             f" .{SCOPE} h2 {{ font-size: 17px; margin: 16px 0 6px; }}")


def scoped_css(css: str, scope: str) -> str:
    """`css` with every rule limited to the elements inside `scope` (a selector): `:root`,
    `html` and `body` become the scope itself, `*` and the rest its descendants."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)

    def scoped(match: re.Match) -> str:
        selectors = []
        for selector in match.group(1).split(","):
            selector = selector.strip()
            if selector in (":root", "html", "body"):
                selectors.append(scope)
            else:
                selectors.append(f"{scope} {selector}")
        return f"{', '.join(selectors)} {{{match.group(2)}}}"

    return re.sub(r"([^{}]+)\{([^{}]*)\}", scoped, css).strip()
