"""Weights files: parameters, buffers, optimizer state and metadata in one `.npz`.

Keys: `param/<name>`, `buffer/<name>`, `optim/<key>`, and `meta`, a JSON document (as
uint8 bytes) holding the architecture text and bindings, the training settings, progress
(epoch, step, running sums, history), the dropout RNG state and the class names.
Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from cnndsl.errors import CnnDslError

FORMAT = "cnndsl-weights-1"


class CheckpointError(CnnDslError):
    """A weights file that cannot be used (missing, corrupt, another architecture)."""


def save(path: str, model, optimizer=None, meta: dict | None = None) -> None:
    arrays = {f"param/{k}": v for k, v in model.parameters().items()}
    arrays.update({f"buffer/{k}": v for k, v in model.buffers().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    document = {"format": FORMAT, **(meta or {})}
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


def restore_model(model, arrays: dict, path: str) -> None:
    """Copy parameters and buffers into `model`, after checking they are its own."""
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
