"""Pictures of what a network computes, as PNG bytes (`cnndsl show`, the HTML report).

- `filter_grid_png(model)`: the first conv layer's filters, one tile per filter;
- `feature_map_pngs(model, x)`: for one input x (1, *input), the output of every conv and
  pool layer that keeps spatial axes, one tile per channel;
- `input_png(model, x)`: the input itself;
- `maximize(model, layer, channel)`: the input that maximises one unit, by gradient ascent
  through the model's own backward.

Arrays are channels-last as the DSL declares them (x: N×H×W×C, 1-D N×L×C, 3-D N×D×H×W×C).
Figures are drawn with matplotlib's `Figure` and Agg directly: no pyplot, no process-wide
backend switch.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from cnndsl.errors import CnnDslError, did_you_mean
from cnndsl.ops import OPS

MAX_TILES = 64          # channels (or filters) drawn per picture
MIN_TILE_PX = 80        # a small map or kernel is enlarged to at least this many pixels
DPI = 100
GAP_COLOUR = "#d4d4d4"  # between tiles of a signed map: light, but not the white of 0
GREY_GAP_COLOUR = "#c8d6e8"  # between grey or RGB tiles: a tint no grey can match
HEATMAP_COLUMNS = 1000  # a longer 1-D map is drawn by its peaks (see `_peaks`)
SIGNED = "RdBu_r"       # feature maps: blue < 0 < red, white at zero
DEFAULT_STEPS = 64
DEFAULT_LR = 0.2
DECAY = 0.02            # L2 decay per step: x settles near lr / decay in RMS
START_SCALE = 0.05      # the seeded random start
CLIP = 3.0              # |x| stays within this (images are read into [0, 1])
JITTER = 2              # positions the input is shifted by, at most, at each step
BLUR_EVERY = 4


class ShowError(CnnDslError):
    """A layer or unit to show that the network does not have."""


# ---------------------------------------------------------------------------- layers

def _layers(model):
    """(name, node) of every layer (the input excluded), in execution order."""
    return [(name, node) for name, node in model.graph.nodes(data=True)
            if node["op"] != "Input"]


def _family(node) -> str:
    return OPS[node["op"]].family


def _call(node) -> str:
    """`Conv(32, 3x3)`: the layer as written, with its resolved arguments."""
    op = OPS[node["op"]]
    args = op.describe(node["params"])
    return f"{op.name}({args})" if args else op.name


def first_conv_layer(model) -> str | None:
    """The first layer (execution order) of the conv family, or None."""
    return next((name for name, node in _layers(model) if _family(node) == "conv"), None)


def feature_layers(model) -> list[str]:
    """The conv- and pool-family layers whose output keeps spatial axes."""
    return [name for name, node in _layers(model)
            if _family(node) in ("conv", "pool") and len(node["shape"]) >= 2]


def check_unit(model, layer: str, channel: int) -> None:
    """Raise ShowError unless `layer` is a layer and `channel` one of its channels (the
    last axis; the unit of a flat output)."""
    graph = model.graph
    if layer not in graph or OPS[graph.nodes[layer]["op"]].is_input:
        names = [name for name, _ in _layers(model)]
        raise ShowError(f"{model.name} has no layer '{layer}'",
                        hint=did_you_mean(layer, names)
                        or f"its layers are {_listed(names)}")
    node = graph.nodes[layer]
    count = node["shape"][-1]
    if not 0 <= channel < count:
        what = "channel" if len(node["shape"]) > 1 else "unit"
        raise ShowError(f"{node['op']} '{layer}' ({_fmt(node['shape'])}) has {count} "
                        f"{what}s, 0..{count - 1}; asked for {what} {channel}",
                        span=node.get("span"), hint=f"give {layer}:N with 0 <= N < {count}")


def _listed(names: list[str], cap: int = 12) -> str:
    return ", ".join(names[:cap]) + (", ..." if len(names) > cap else "")


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------- filters

def filter_grid_png(model) -> bytes | None:
    """The first conv layer's filters as a grid of tiles: RGB for 3 input channels,
    grey for 1, else one tile per (filter, input channel); each filter scaled by its
    largest |weight| (grey or black-ish = 0). 1-D filters are line plots; 3-D filters
    show their middle depth slice. None when the network has no conv layer."""
    layer = first_conv_layer(model)
    if layer is None:
        return None
    node = model.graph.nodes[layer]
    weight, shape = _filter_bank(model, layer)
    rank = weight.ndim - 2
    head = f"{layer}: {_call(node)}, weight {_fmt(shape)}"
    if rank == 1:
        return _filter_lines(weight, head)
    if rank == 3:
        depth = weight.shape[2]
        weight = weight[:, :, depth // 2]
        head += f"\nmiddle depth slice ({depth // 2} of 0..{depth - 1})"
    return _filter_tiles(weight, head)


def _filter_bank(model, layer: str) -> tuple[np.ndarray, tuple]:
    """(filters as (F, C, *kernel), the weight's own shape): the layer's first parameter,
    whose last axes are the kernel and the one before them the input channels (every
    conv layout of docs/language.md); any axes before those are flattened into F."""
    graph = model.graph
    rank = len(graph.nodes[graph.nodes[layer]["inputs"][0]]["shape"]) - 1
    weight = next(array for name, array in model.parameters().items()
                  if name.startswith(f"{layer}."))
    bank = weight.reshape(-1, *weight.shape[-rank - 1:])
    return bank.astype(np.float64), weight.shape


def _per_filter_scaled(weight: np.ndarray) -> np.ndarray:
    """Each filter divided by its largest |weight|: values in [-1, 1], 0 stays 0."""
    peak = np.abs(weight).reshape(len(weight), -1).max(axis=1)
    peak[peak == 0] = 1
    return weight / peak.reshape(-1, *[1] * (weight.ndim - 1))


def _filter_tiles(weight: np.ndarray, head: str) -> bytes:
    """weight: (F, C, kh, kw)."""
    count, channels = weight.shape[:2]
    scaled = _per_filter_scaled(weight)
    if channels == 3:
        shown = min(count, MAX_TILES)
        tiles = 0.5 + 0.5 * scaled[:shown].transpose(0, 2, 3, 1)  # (F, kh, kw, RGB)
        note = f"{_of(shown, count, 'filter')}, RGB; grey = 0, each filter scaled by its |max|"
        return _grid_png(tiles, f"{head}\n{note}", rgb=True)
    if channels == 1:
        shown = min(count, MAX_TILES)
        tiles = scaled[:shown, 0]
        note = f"{_of(shown, count, 'filter')}; grey = 0, each filter scaled by its |max|"
        return _grid_png(tiles, f"{head}\n{note}", cmap="gray", limits=(-1, 1))
    columns = min(channels, 8)
    rows = min(count, MAX_TILES // columns)
    tiles = scaled[:rows, :columns].reshape(rows * columns, *weight.shape[2:])
    note = (f"rows: {_of(rows, count, 'filter')}; columns: input channels 0..{columns - 1}"
            f" of {channels}; grey = 0")
    return _grid_png(tiles, f"{head}\n{note}", cmap="gray", limits=(-1, 1), columns=columns,
                     labels=False)


def _filter_lines(weight: np.ndarray, head: str) -> bytes:
    """weight: (F, C, k): one small line plot per filter, a line per input channel."""
    count, channels = weight.shape[:2]
    shown = min(count, MAX_TILES)
    columns = min(8, shown)
    rows = math.ceil(shown / columns)
    figure = _figure(1.4 * columns, 1.0 * rows + 0.9)
    axes = figure.subplots(rows, columns, squeeze=False)
    scaled = _per_filter_scaled(weight[:shown])
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index >= shown:
            continue
        axis.axhline(0, color="#bbbbbb", linewidth=0.6)
        for c in range(min(channels, 3)):
            axis.plot(scaled[index, c], linewidth=0.9)
        axis.set_ylim(-1.1, 1.1)
        axis.set_title(str(index), fontsize=7, pad=1)
    lines = "" if channels == 1 else f", a line per input channel (first {min(channels, 3)})"
    text = f"{head}\n{_of(shown, count, 'filter')}{lines}; each scaled by its |max|"
    figure.suptitle(_wrapped(text, 1.4 * columns), fontsize=10, x=0.01, ha="left")
    return _png(figure)


def _of(shown: int, total: int, what: str) -> str:
    plural = what + ("s" if total != 1 else "")
    return f"{total} {plural}" if shown == total else f"{shown} of {total} {plural}"


# ---------------------------------------------------------------------------- feature maps

def feature_map_pngs(model, x: np.ndarray) -> list[tuple[str, tuple, bytes]]:
    """(layer, output shape, PNG) for every conv/pool layer with spatial output (see
    `feature_layers`), for one input x: (1, *input). Each picture shows up to MAX_TILES
    channels on one signed colour scale (blue < 0 < red) shared by the layer; a conv
    layer's output is before any ReLU after it (Model.features)."""
    x = _one_input(model, x)
    names = feature_layers(model)
    if not names:
        return []
    values = model.features(x, names)
    out = []
    for name in names:
        node = model.graph.nodes[name]
        shape = tuple(node["shape"])
        out.append((name, shape, _feature_png(values[name][0], f"{name}: {_call(node)}",
                                              shape)))
    return out


def _feature_png(y: np.ndarray, head: str, shape: tuple) -> bytes:
    """y: one example's output (*spatial, C)."""
    channels = y.shape[-1]
    shown = min(channels, MAX_TILES)
    head = f"{head}, output {_fmt(shape)}\n{_of(shown, channels, 'channel')}"
    if y.ndim == 4:
        depth = y.shape[0]
        y = y[depth // 2]
        head += f", middle depth slice ({depth // 2} of 0..{depth - 1})"
    maps = np.moveaxis(y[..., :shown], -1, 0).astype(np.float64)  # (C, *spatial)
    limit = _signed_limit(maps)
    head += "; one scale, blue < 0 < red"
    if maps.ndim == 2:  # 1-D: channels x length
        return _heatmap_png(maps, head, limit)
    return _grid_png(maps, head, cmap=SIGNED, limits=(-limit, limit), colorbar="activation")


def _signed_limit(values: np.ndarray) -> float:
    """The colour scale's end: a high percentile of |values|, so one outlier does not
    wash the rest out (the few above it saturate)."""
    limit = float(np.percentile(np.abs(values), 99.5)) if values.size else 0.0
    if limit <= 0:
        limit = float(np.abs(values).max(initial=0.0))
    return limit if limit > 0 else 1.0


def _heatmap_png(maps: np.ndarray, head: str, limit: float) -> bytes:
    """maps: (C, L) as rows of a heatmap."""
    channels, length = maps.shape
    maps, width = _peaks(maps, HEATMAP_COLUMNS)
    if width > 1:
        head += f"\neach column: the value of largest |value| of {width} positions"
    figure = _figure(10, min(1.8 + 0.09 * channels, 9))
    axis = figure.subplots()
    image = axis.imshow(maps, aspect="auto", cmap=SIGNED, vmin=-limit, vmax=limit,
                        interpolation="nearest", extent=(0, length, channels - 0.5, -0.5))
    axis.set_xlabel("position")
    axis.set_ylabel("channel")
    axis.set_title(_wrapped(head, 10), fontsize=10, loc="left")
    figure.colorbar(image, ax=axis, label="activation", shrink=0.9)
    return _png(figure)


def _peaks(maps: np.ndarray, columns: int) -> tuple[np.ndarray, int]:
    """(maps (C, L) cut into at most `columns` runs of `width` positions, each run's value
    of largest magnitude with its sign, width): a long signal keeps its peaks and their
    sign where averaging (or the screen's resampling) would cancel an oscillation out."""
    length = maps.shape[1]
    width = math.ceil(length / columns)
    if width <= 1:
        return maps, 1
    runs = math.ceil(length / width)
    padded = np.zeros((len(maps), runs * width))
    padded[:, :length] = maps
    blocks = padded.reshape(len(maps), runs, width)
    pick = np.abs(blocks).argmax(axis=2)
    return np.take_along_axis(blocks, pick[..., None], axis=2)[..., 0], width


# ---------------------------------------------------------------------------- input

def input_png(model, x: np.ndarray, title: str | None = None, stretch: bool = False) -> bytes:
    """One input x ((1, *input) or (*input)): an image (RGB for 3 channels, grey for 1,
    a tile per channel otherwise), 1-D lines, 3-D depth slices of channel 0. Values in
    [0, 1] are drawn as they are, others stretched from their minimum to their maximum;
    with `stretch` (a maximising input), mean ± 3 standard deviations fill the range."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape == model.input_shape:
        x = x[None]
    x = _one_input(model, x)[0].astype(np.float64)
    title = title or f"input of {model.name} ({_fmt(model.input_shape)})"
    if x.ndim == 1:
        x = x[:, None]  # a flat vector: one line
    if x.ndim == 2:
        return _lines_png(x, title)
    if stretch:
        spread = 3 * float(x.std()) or 1.0
        low, high = float(x.mean()) - spread, float(x.mean()) + spread
        title += "\nshown as mean ± 3 std (mid-grey = the mean)"
    elif x.min() >= 0 and x.max() <= 1:
        low, high = 0.0, 1.0
    else:
        low, high = float(x.min()), float(x.max()) or 1.0
    if x.ndim == 4:
        depth = x.shape[0]
        shown = min(depth, MAX_TILES)
        return _grid_png(x[:shown, ..., 0], f"{title}\n{_of(shown, depth, 'depth slice')}"
                         " of channel 0", limits=(low, high), colorbar="value")
    channels = x.shape[-1]
    if channels == 3:
        rgb = (x - low) / max(high - low, 1e-12)
        return _grid_png(rgb[None], title, rgb=True, labels=False, min_px=224)
    if channels == 1:
        return _grid_png(x[None, ..., 0], title, limits=(low, high), labels=False,
                         min_px=224, colorbar="value")
    shown = min(channels, MAX_TILES)
    return _grid_png(np.moveaxis(x[..., :shown], -1, 0),
                     f"{title}\n{_of(shown, channels, 'channel')}", limits=(low, high),
                     colorbar="value")


def _lines_png(x: np.ndarray, title: str) -> bytes:
    """x: (L, C): a strip per channel (at most 8)."""
    channels = min(x.shape[1], 8)
    figure = _figure(10, 0.9 + 1.3 * channels)
    axes = figure.subplots(channels, 1, squeeze=False, sharex=True)[:, 0]
    for c, axis in enumerate(axes):
        axis.plot(x[:, c], linewidth=0.7)
        axis.set_ylabel(f"channel {c}", fontsize=8)
    axes[-1].set_xlabel("position")
    more = f" (first 8 of {x.shape[1]} channels)" if x.shape[1] > 8 else ""
    axes[0].set_title(_wrapped(title + more, 10), fontsize=10, loc="left")
    return _png(figure)


def _one_input(model, x) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (1, *model.input_shape):
        raise ValueError(f"expected one input of shape (1, {', '.join(map(str, model.input_shape))})"
                         f", got {x.shape}")
    return x


# ---------------------------------------------------------------------------- maximize

def maximize(model, layer: str, channel: int = 0, steps: int = DEFAULT_STEPS, seed: int = 0,
             lr: float = DEFAULT_LR) -> np.ndarray:
    """The input (*input shape) that maximises one unit of `layer`: the mean of its
    `channel` over all positions (a flat layer: that unit), as the layer computes it (a
    conv before the ReLU after it). Gradient ascent from a small seeded random start,
    through the model's own forward and backward (of the network cut after `layer`):
    steps of `lr` along the gradient scaled to unit RMS, each at a random shift of the
    input of up to JITTER positions, an L2 decay, |x| <= CLIP, and a light blur every
    BLUR_EVERY steps. The shifts and the blur favour patterns over pixel noise and
    border artefacts (Yosinski et al., 2015)."""
    check_unit(model, layer, channel)
    part = _cut_after(model, layer)
    shape = part.output_shape
    gy = np.zeros((1, *shape), model.dtype)
    gy[..., channel] = 1 / math.prod(shape[:-1])  # d(mean over positions)/dy
    rng = np.random.default_rng(seed)
    x = rng.normal(0, START_SCALE, (1, *model.input_shape)).astype(model.dtype)
    axes = tuple(range(1, x.ndim - 1))  # spatial; none for a flat input
    for step in range(steps):
        shift = tuple(int(s) for s in rng.integers(-JITTER, JITTER + 1, len(axes)))
        part.forward(np.roll(x, shift, axes) if axes else x)
        dx, _ = part.backward(gy)
        if axes:
            dx = np.roll(dx, tuple(-s for s in shift), axes)
        rms = float(np.sqrt(np.mean(np.square(dx, dtype=np.float64))))
        if rms == 0:
            break  # the unit does not depend on x here (say, a dead ReLU everywhere)
        x = np.clip((x + (lr / rms) * dx) * (1 - DECAY), -CLIP, CLIP)
        if axes and step % BLUR_EVERY == BLUR_EVERY - 1:
            x = _blurred(x, axes)
        x = x.astype(model.dtype)
    return x[0]


def _blurred(x: np.ndarray, axes: tuple) -> np.ndarray:
    """x smoothed with (1, 2, 1) / 4 along each of `axes`, edges repeated."""
    for axis in axes:
        padded = np.concatenate([np.take(x, [0], axis), x, np.take(x, [-1], axis)], axis)
        n = x.shape[axis]
        x = (np.take(padded, range(n), axis) + 2 * x
             + np.take(padded, range(2, n + 2), axis)) / 4
    return x


def unit_activation(model, layer: str, channel: int, x: np.ndarray) -> float:
    """The unit `maximize` climbs, for one input x (*input shape)."""
    y = model.features(np.asarray(x)[None], [layer])[layer][0]
    return float(y[..., channel].mean())


def _cut_after(model, layer: str):
    """A model of the network up to `layer` (its output), with `model`'s weights."""
    from cnndsl.model import Model

    graph = model.graph
    keep = nx.ancestors(graph, layer) | {layer}
    # built node by node: the model runs its graph's node order (a subgraph view of
    # networkx may iterate a small node set in set order)
    sub = nx.DiGraph()
    sub.graph.update(graph.graph, output=layer)
    sub.add_nodes_from((name, node) for name, node in graph.nodes(data=True) if name in keep)
    sub.add_edges_from((a, b, data) for a, b, data in graph.edges(data=True)
                       if a in keep and b in keep)
    part = Model(sub, dtype=model.dtype, backend=model.backend)
    sources = {**model.parameters(), **model.buffers()}
    for name, array in {**part.parameters(), **part.buffers()}.items():
        array[...] = sources[name]
    return part


# ---------------------------------------------------------------------------- drawing

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _grid_png(tiles: np.ndarray, title: str, *, rgb: bool = False, cmap: str = "gray",
              limits: tuple = (0, 1), columns: int | None = None, labels: bool = True,
              colorbar: str | None = None, min_px: int = MIN_TILE_PX) -> bytes:
    """tiles: (T, h, w) scalars drawn with `cmap` over `limits`, or (T, h, w, 3) RGB in
    [0, 1]; in rows of `columns` (a near-square grid by default), each enlarged by a
    whole factor to at least `min_px` pixels, numbered above if `labels`."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    count, h, w = tiles.shape[:3]
    columns = columns or _columns(count)
    rows = math.ceil(count / columns)
    scale = max(1, math.ceil(min_px / max(h, w)))
    gap = max(2, min(h, w) * scale // 24)
    width_px = columns * (w * scale + gap) - gap
    width = min(max(width_px / DPI, 4.0), 11.0)  # inches the mosaic is drawn across
    zoom = width * DPI / width_px                # screen pixels per mosaic pixel
    band = math.ceil(13 / zoom) if labels and count > 1 else 0  # room for the numbers
    if labels and count > 1 and w * scale * zoom < 18:
        band = 0  # tiles too small to number legibly
    norm = Normalize(*limits)
    if rgb:
        colours = np.round(np.clip(tiles, 0, 1) * 255).astype(np.uint8)
    else:
        colours = colormaps[cmap](norm(tiles), bytes=True)[..., :3]
    gap_colour = GAP_COLOUR if cmap == SIGNED and not rgb else GREY_GAP_COLOUR
    mosaic = _mosaic(colours, columns, scale, gap, band, gap_colour)
    height = width * mosaic.shape[0] / mosaic.shape[1]
    if height > 11:
        width, height, zoom = width * 11 / height, 11, zoom * 11 / height
    figure_width = width + (1.3 if colorbar else 0.3)
    title = _wrapped(title, figure_width)
    lines = title.count("\n") + 1
    figure = _figure(figure_width, height + 0.3 + 0.2 * lines)
    axis = figure.subplots()
    axis.imshow(mosaic, interpolation="nearest" if zoom >= 1 else "antialiased")
    axis.set_axis_off()
    axis.set_title(title, fontsize=10, loc="left")
    if band:
        step_y, step_x = h * scale + gap + band, w * scale + gap
        for index in range(count):
            r, c = divmod(index, columns)
            axis.text(c * step_x, r * step_y + band - 1, str(index), fontsize=7,
                      va="bottom", ha="left", color="#333333")
    if colorbar:
        figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axis, label=colorbar,
                        shrink=min(0.8, 0.3 + 0.25 * rows))
    return _png(figure)


def _wrapped(title: str, width: float) -> str:
    """`title` with each line broken to fit `width` inches at the titles' font size (a
    title wider than its figure would squeeze the picture)."""
    import textwrap

    chars = max(30, int(width * DPI / 8.2))
    return "\n".join(textwrap.fill(line, chars, break_long_words=True) or line
                     for line in title.split("\n"))


def _columns(count: int) -> int:
    """Columns of a near-square grid of `count` tiles, preferring one without a ragged
    last row (32 -> 8 x 4, not 6 x 6 with four empty)."""
    side = math.ceil(math.sqrt(count))
    return next((c for c in range(side, 2 * side) if count % c == 0), side)


def _mosaic(colours: np.ndarray, columns: int, scale: int, gap: int, band: int,
            gap_colour: str) -> np.ndarray:
    """RGB tiles (T, h, w, 3) uint8 side by side on `gap_colour`, each enlarged `scale`
    times, `gap` pixels apart with a band of `band` pixels above each row (for its
    numbers); cells past the last tile are white."""
    from matplotlib.colors import to_rgb

    count, h, w = colours.shape[:3]
    rows = math.ceil(count / columns)
    th, tw = h * scale, w * scale
    out = np.empty((rows * (th + gap + band) - gap, columns * (tw + gap) - gap, 3), np.uint8)
    out[:] = np.round(np.array(to_rgb(gap_colour)) * 255)
    for index in range(rows * columns):
        r, c = divmod(index, columns)
        top, left = r * (th + gap + band) + band, c * (tw + gap)
        if index >= count:
            out[top - band:top + th, left:left + tw] = 255
            continue
        tile = np.repeat(np.repeat(colours[index], scale, axis=0), scale, axis=1)
        out[top:top + th, left:left + tw] = tile
    return out
