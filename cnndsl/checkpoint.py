"""Weights files: parameters, buffers, optimizer state and metadata in one `.npz`.

Keys: `param/<name>`, `buffer/<name>`, `optim/<key>`, and `meta`, a JSON document (as
uint8 bytes) holding the compiled graph (`cnndsl.architecture`), the architecture text and
bindings, the training settings and data, progress (epoch, step, running sums, history),
the dropout RNG state and the class names. Loading weights into a model compares the
stored graph with the model's and refuses another network with the first difference.
Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from cnndsl import architecture
from cnndsl.errors import CnnDslError

FORMAT = "cnndsl-weights-1"


class CheckpointError(CnnDslError):
    """A weights file that cannot be used (missing, corrupt, another architecture)."""


def save(path: str, model, optimizer=None, meta: dict | None = None) -> None:
    arrays = {f"param/{k}": v for k, v in model.parameters().items()}
    arrays.update({f"buffer/{k}": v for k, v in model.buffers().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    graph = {"version": architecture.VERSION, "layers": architecture.describe(model.graph)}
    document = {"format": FORMAT, **(meta or {}), "graph": graph}
    arrays["meta"] = np.frombuffer(json.dumps(document).encode("utf-8"), dtype=np.uint8)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def load(path: str) -> tuple[dict, dict]:
    """(arrays by key, meta) of a weights file; CheckpointError if it is not one."""
    if not Path(path).is_file():
        raise CheckpointError(f"weights file '{path}' does not exist",
                              hint="train first: cnndsl train FILE -o WEIGHTS.npz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"'{path}' is not a readable weights file ({error})",
                              hint="it may be truncated or corrupted; use an earlier copy "
                                   "or train again") from None
    if "meta" not in arrays:
        raise CheckpointError(f"'{path}' is an .npz file but not a cnndsl weights file "
                              "(no 'meta' entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"'{path}': its metadata is corrupted") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' has an unknown format {meta.get('format')!r}")
    return arrays, meta


def check_architecture(model, meta: dict, path: str, force: bool = False,
                       warn=None) -> None:
    """Refuse weights trained in another graph than `model`'s, naming the first difference;
    with `force`, call `warn(message)` instead (the weights must still fit)."""
    difference = _architecture_difference(model, meta, path)
    if difference is None:
        return
    if force:
        if warn is not None:
            warn(f"'{path}' was trained on another network ({difference}); loading it "
                 "anyway because of --force")
        return
    raise CheckpointError(f"'{path}' holds weights of another network: {difference}",
                          hint="use the .cnn file (and --set bindings) it was trained with "
                               "(its text is stored in the weights file: `cnndsl eval "
                               "--weights W.npz` uses it), or --force to load them anyway")


def _architecture_difference(model, meta: dict, path: str) -> str | None:
    here = architecture.describe(model.graph)
    stored = meta.get("graph")
    if isinstance(stored, dict) and stored.get("version") == architecture.VERSION:
        return architecture.first_difference(stored["layers"], here, Path(path).name)
    text = meta.get("architecture")
    if not isinstance(text, str):
        return "the file does not say which network it belongs to"
    from cnndsl.frontend import check_text

    try:  # an older file: compile the text it was trained from
        graph = check_text(text, meta.get("bindings") or {})
    except CnnDslError as error:
        return f"its stored network no longer compiles ({error.message})"
    return architecture.first_difference(architecture.describe(graph), here,
                                         Path(path).name)


def restore_model(model, arrays: dict, meta: dict, path: str, force: bool = False,
                  warn=None) -> None:
    """Copy parameters and buffers into `model`, after checking they are its own: the same
    compiled graph (`check_architecture`), then the same names and shapes."""
    check_architecture(model, meta, path, force, warn)
    for kind, expected in (("param", model.parameters()), ("buffer", model.buffers())):
        stored = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(kind + "/")}
        for name, array in expected.items():
            if name not in stored:
                raise _other_network(path, f"it has no {kind} '{name}'", stored)
            if stored[name].shape != array.shape:
                raise _other_network(path, f"'{name}' is {_shape(stored[name].shape)} there "
                                     f"but {_shape(array.shape)} here", stored)
        extra = [name for name in stored if name not in expected]
        if extra:
            raise _other_network(path, f"it has '{extra[0]}', which this network lacks",
                                 stored)
        for name, array in expected.items():
            array[...] = stored[name]


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "a scalar"


def _other_network(path: str, detail: str, stored: dict) -> CheckpointError:
    return CheckpointError(f"'{path}' holds weights of another network: {detail}",
                           hint="use the .cnn file (and --set bindings) it was trained with; "
                                "its text is stored in the weights file")


def load_into(model, path: str, force: bool = False, warn=None) -> dict:
    """Load the weights file at `path` into `model` (checked as `restore_model` does);
    returns its metadata."""
    arrays, meta = load(path)
    restore_model(model, arrays, meta, path, force, warn)
    return meta
