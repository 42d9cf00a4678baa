"""Run a cnndsl IR graph with PyTorch (torch.nn.functional), for cross-checks in tests.

`torch_forward(model, x, train)` interprets the model's IR graph node by node with torch
ops on NCHW tensors, using cnndsl's parameters unchanged (they are in PyTorch's layouts,
docs/language.md). Asymmetric 'same' padding is applied with F.pad first.
Dropout is the identity here: compare networks with dropout in eval mode.

It walks the graph as written (`cnndsl.export.layers`, every layer unfused), not the
model's run plan (`model.layers`): the plan folds an activation into the layer before it (a
Conv computes the ReLU after it, and the ReLU becomes a pass-through), and a reference that
followed the plan would repeat any mistake in it. Here every ReLU is its own F.relu, so a
fused network is checked against the unfused computation it must equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnndsl.ops import OPS


def nchw(x):
    """(N, *spatial, C) numpy -> (N, C, *spatial) torch tensor, float64."""
    t = torch.from_numpy(x).double()
    return t.movedim(-1, 1).contiguous()


def nhwc(t):
    return t.movedim(1, -1).contiguous().detach().numpy()


def _pads(before, after, rank):
    """(D, H, W) triples -> F.pad's list, last axis first."""
    pads = []
    for axis in reversed(range(3 - rank, 3)):
        pads += [before[axis], after[axis]]
    return pads


def _conv(rank):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]


def _window(x, geo, rank, fill):
    return F.pad(x, _pads(geo["pad_before"], geo["pad_after"], rank), value=fill)


def _triple_to_rank(values, rank):
    return tuple(values[3 - rank:])


def _flipped(weight, p, rank):
    """`flip=true`: the true convolution, i.e. cross-correlation with the kernel reversed
    on every spatial axis."""
    if getattr(p, "flip", False):
        return torch.flip(weight, dims=tuple(range(2, 2 + rank)))
    return weight


def run_node(op_name, p, geo, w, xs, rank, train):
    x = xs[0] if xs else None
    if op_name == "Conv":
        x = _window(x, geo, rank, 0.0)
        return _conv(rank)(x, _flipped(w["weight"], p, rank), w.get("bias"),
                           stride=_triple_to_rank(geo["stride"], rank),
                           dilation=_triple_to_rank(geo["dilation"], rank), groups=p.groups)
    if op_name == "ConvT":
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
        return fn(x, w["weight"], w.get("bias"), stride=_triple_to_rank(geo["stride"], rank),
                  padding=_triple_to_rank(geo["pad"], rank),
                  output_padding=_triple_to_rank(geo["output_pad"], rank))
    if op_name == "DepthwiseConv":
        x = _window(x, geo, rank, 0.0)
        return _conv(rank)(x, _flipped(w["weight"], p, rank), w.get("bias"),
                           stride=_triple_to_rank(geo["stride"], rank), groups=x.shape[1])
    if op_name == "SeparableConv":
        x = _window(x, geo, rank, 0.0)
        mid = _conv(rank)(x, w["depthwise"], None, stride=_triple_to_rank(geo["stride"], rank),
                          groups=x.shape[1])
        return _conv(rank)(mid, w["pointwise"], w.get("bias"))
    if op_name == "LocalConv":  # zeros first where it pads (geometry says so only then)
        if "pad_before" in geo:
            x = _window(x, geo, rank, 0.0)
        return _local(x, w, p, geo, rank)
    if op_name in ("MaxPool", "AvgPool", "L2Pool"):
        kernel = _triple_to_rank(geo["kernel"], rank)
        stride = _triple_to_rank(geo["stride"], rank)
        if op_name == "MaxPool":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
            return fn(_window(x, geo, rank, float("-inf")), kernel, stride)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
        if op_name == "AvgPool":
            return fn(_window(x, geo, rank, 0.0), kernel, stride)
        size = 1
        for k in kernel:
            size *= k
        return torch.sqrt(fn(_window(x * x, geo, rank, 0.0), kernel, stride) * size)
    if op_name == "GlobalAvgPool":
        return x.flatten(2).mean(dim=2)
    if op_name == "GlobalMaxPool":
        return x.flatten(2).amax(dim=2)
    if op_name == "Flatten":
        return x.flatten(1)
    if op_name == "FC":
        return F.linear(x.flatten(1), w["weight"], w.get("bias"))
    if op_name == "ReLU":
        return F.relu(x)
    if op_name == "LeakyReLU":
        return F.leaky_relu(x, p.alpha)
    if op_name == "Sigmoid":
        return torch.sigmoid(x)
    if op_name == "Tanh":
        return torch.tanh(x)
    if op_name == "Softmax":
        return F.softmax(x, dim=1)
    if op_name == "Maxout":  # channel j = max over channels [j*pieces, (j+1)*pieces)
        return x.unflatten(1, (x.shape[1] // p.pieces, p.pieces)).amax(dim=2)
    if op_name == "BatchNorm":
        return F.batch_norm(x, w["running_mean"], w["running_var"], w["weight"], w["bias"],
                            training=train, momentum=p.momentum, eps=p.eps)
    if op_name in ("Dropout", "Identity"):
        return x
    if op_name == "Concat":
        return torch.cat(xs, dim=1)
    if op_name == "Add":
        total = xs[0]
        for other in xs[1:]:
            total = total + other
        return total
    raise NotImplementedError(op_name)


def _local(x, w, p, geo, rank):
    """Locally connected layer: unfold patches, one weight per output position."""
    stride = _triple_to_rank(geo["stride"], rank)
    w5 = w["weight"]  # (*out, F, C, *kernel)
    kernel = w5.shape[-rank:]
    patches = x
    for axis in range(rank):
        patches = patches.unfold(2 + axis, kernel[axis], stride[axis])
    # patches: (N, C, *out, *kernel) -> y[n, f, *out] = sum_c,k w[*out, f, c, *k] x[...]
    out = patches.shape[2:2 + rank]
    n, c = patches.shape[:2]
    flat_patches = patches.reshape(n, c, -1, *kernel).movedim(2, 1)  # (N, P, C, *k)
    flat_w = w5.reshape(-1, w5.shape[rank], c, *kernel)  # (P, F, C, *k)
    y = torch.einsum("npc...,pfc...->nfp", flat_patches, flat_w).reshape(n, -1, *out)
    if "bias" in w:
        y = y + w["bias"].unsqueeze(0)
    return y


def torch_forward(model, x, train=False):
    """Run `model`'s graph with torch on float64 copies of its parameters.

    Returns (output as numpy channels-last, input tensor, {param name: leaf tensor}) so
    callers can backpropagate and compare gradients."""
    from cnndsl.export import layers

    leaves = {name: torch.from_numpy(array.astype("float64")).requires_grad_(True)
              for name, array in model.parameters().items()}
    buffers = {name: torch.from_numpy(array.astype("float64").copy())
               for name, array in model.buffers().items()}
    arrays = {**leaves, **buffers}
    x_t = nchw(x).requires_grad_(True)
    values = {model.input_name: x_t}
    for layer in layers(model):  # the unfused plan: the graph's nodes, in the model's order
        local = {k: arrays[f"{layer.name}.{k}"] for k in layer.weights}
        values[layer.name] = run_node(layer.op, layer.params, layer.geometry, local,
                                      [values[i] for i in layer.inputs], layer.rank, train)
    out = values[model.output_name]
    return out, x_t, leaves


def to_numpy_channels_last(t):
    return nhwc(t) if t.dim() > 2 else t.detach().numpy()


assert OPS  # the registry is loaded (run_node dispatches on its names)
