"""Weights files: parameters, buffers, optimizer state and metadata in one `.npz`.

Keys: `param/<name>`, `buffer/<name>`, `optim/<key>`, and `meta`, a JSON document (as
uint8 bytes) holding the compiled graph (`cnndsl.architecture`), the architecture text and
bindings, the training settings and data, progress (epoch, step, running sums, history),
the dropout RNG state and the class names. Loading weights into a model compares the
stored graph with the model's and refuses another network with the first difference.

Files are written to a unique temporary name in the same folder and renamed, so a crash, a
full disk or a second run saving to the same file never leaves half a file (the previous
one stays as it was). Reading trusts nothing: every zip entry and `.npy` header is checked
(compression, sizes, dtype, shape) before a byte of array data is read, so what is
inflated is bounded by what the header declares, and the metadata is checked field by
field, so a hostile or damaged file is a CheckpointError, never an internal error.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np

from cnndsl import architecture
from cnndsl.errors import CnnDslError

FORMAT = "cnndsl-weights-1"
#: cnndsl writes entries uncompressed (np.savez); deflated ones (np.savez_compressed, a
#: re-zipped file) may inflate to this much in total, so a zip bomb cannot fill memory
MAX_INFLATED = 256 * 2**20
#: the metadata (architecture text, history, class names) is small; a .npy header too
MAX_META = 64 * 2**20
MAX_HEADER = 10_000
KINDS = ("param/", "buffer/", "optim/")
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", 9: "deflate64",
           12: "bzip2", 14: "lzma", 93: "zstandard", 99: "AES encryption"}


class CheckpointError(CnnDslError):
    """A weights file that cannot be used (missing, corrupt, another architecture)."""


# ---- saving ------------------------------------------------------------------------------

def save(path: str, model, optimizer=None, meta: dict | None = None) -> None:
    arrays = {f"param/{k}": v for k, v in model.parameters().items()}
    arrays.update({f"buffer/{k}": v for k, v in model.buffers().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    graph = {"version": architecture.VERSION, "layers": architecture.describe(model.graph)}
    document = {"format": FORMAT, **(meta or {}), "graph": graph}
    arrays["meta"] = np.frombuffer(json.dumps(document).encode("utf-8"), dtype=np.uint8)
    write_atomically(path, lambda handle: np.savez(handle, **arrays), "weights")


def write_atomically(path, write, what: str = "file") -> None:
    """Call `write(binary handle)` on a new temporary file beside `path`, then rename it
    over `path`. On any failure the temporary file is removed, `path` is left as it was,
    and a CheckpointError says what failed. The temporary name is unique
    (`.NAME.XXXX.tmp`), so two processes saving to one path never write into each
    other's file: the last rename wins, and a reader sees one whole file or the other."""
    target = Path(path)
    if target.is_dir():
        raise CheckpointError(f"cannot save {what} to '{path}': it is a folder",
                              hint=f"name a file, e.g. -o {target / 'weights.npz'}")
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        temporary = None
    except OSError as error:
        raise _write_error(what, path, error) from None
    finally:
        if temporary is not None:
            with suppress(OSError):
                os.unlink(temporary)


@functools.cache
def _umask() -> int:
    """The process's umask, so a saved file gets the mode open() would give it. Read (by
    setting and restoring it) on the first save, not at import: importing cnndsl changes no
    process-wide state."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(what: str, path: str, error: OSError) -> CheckpointError:
    folder = Path(path).parent
    space = "free some space, or save elsewhere with -o"
    reasons = {
        errno.ENOSPC: ("the disk is full", space),
        errno.EDQUOT: ("the disk quota is exceeded", space),
        errno.EFBIG: ("the file is larger than this system allows (ulimit -f)",
                      "raise the file size limit, or save elsewhere with -o"),
        errno.EACCES: (f"no permission to write in '{folder}'", "save elsewhere with -o"),
        errno.EPERM: (f"no permission to write in '{folder}'", "save elsewhere with -o"),
        errno.EROFS: (f"'{folder}' is on a read-only file system", "save elsewhere with -o"),
        errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the -o path"),
        errno.EEXIST: ("a part of the path is a file, not a folder", "check the -o path"),
        errno.EISDIR: ("it is a folder", "name a file with -o"),
    }
    reason, hint = reasons.get(error.errno, (error.strerror or str(error),
                                             "check the path, or save elsewhere with -o"))
    kept = " (the previous file is unchanged)" if Path(path).is_file() else ""
    return CheckpointError(f"cannot save {what} to '{path}': {reason}{kept}", hint=hint)


# ---- loading -----------------------------------------------------------------------------

def load(path: str) -> tuple[dict, dict]:
    """(arrays by key, meta) of a weights file; CheckpointError if it is not one."""
    handle = _open_regular(path)
    with handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            with zipfile.ZipFile(handle) as archive:
                entries = _check_entries(archive, size, path)
                if "meta" not in entries:
                    raise CheckpointError(f"'{path}' is an .npz file but not a cnndsl weights "
                                          "file (no 'meta' entry)")
                arrays = {key: _read_entry(archive, info, key, path)
                          for key, info in entries.items()}
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, TypeError,
                NotImplementedError, RuntimeError, struct.error, OverflowError) as error:
            raise CheckpointError(f"'{path}' is not a readable weights file ({error})",
                                  hint="it may be truncated or corrupted; use an earlier copy "
                                       "or train again") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"'{path}': its metadata is corrupted") from None
    check_meta(meta, path)
    return arrays, meta


def _open_regular(path: str):
    """The file at `path` opened for reading by cnndsl.source.open_regular, which refuses
    what is not a regular file (a FIFO would block, /dev/zero never ends) without blocking."""
    from cnndsl.source import NotRegularFile, open_regular

    try:
        return open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"weights file '{path}' does not exist",
                              hint="train first: cnndsl train FILE -o WEIGHTS.npz") from None
    except NotRegularFile as error:
        raise CheckpointError(f"'{path}' is not a weights file ({error.strerror})") from None
    except OSError as error:
        raise CheckpointError(f"cannot read weights file '{path}': "
                              f"{error.strerror or error}") from None


def _check_entries(archive: zipfile.ZipFile, size: int, path: str) -> dict:
    """The archive's entries by key, after checking each one's zip header: known key,
    no duplicate, a supported compression, sizes within the file (and within
    MAX_INFLATED for deflated ones)."""
    entries, inflated = {}, 0
    for info in archive.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else None
        if key is None or not (key == "meta" or key.startswith(KINDS)):
            raise _not_cnndsl(path, f"it has an entry '{info.filename[:80]}' that no cnndsl "
                                    "weights file has")
        if key in entries:
            raise _not_cnndsl(path, f"the entry '{key}' is there twice")
        if info.flag_bits & 0x1:
            raise _not_cnndsl(path, f"the entry '{key}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            method = METHODS.get(info.compress_type, f"method {info.compress_type}")
            raise CheckpointError(
                f"'{path}': the entry '{key}' is compressed with {method}, which cnndsl "
                "does not read", hint="cnndsl writes weights uncompressed (numpy.savez); "
                                      "save the arrays again with numpy.savez")
        if info.header_offset + info.compress_size > size:
            raise _corrupt(path, f"the entry '{key}' claims {info.compress_size:,} bytes "
                                 f"but the file has only {size:,}")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _corrupt(path, f"the stored entry '{key}' claims {info.file_size:,} bytes "
                                 f"but holds {info.compress_size:,}")
        if info.compress_type == zipfile.ZIP_DEFLATED:
            inflated += info.file_size
            if inflated > MAX_INFLATED:
                raise CheckpointError(
                    f"'{path}': its compressed entries would inflate to more than "
                    f"{MAX_INFLATED // 2**20} MB (the entry '{key}' alone to "
                    f"{info.file_size:,} bytes from {info.compress_size:,})",
                    hint="cnndsl writes weights uncompressed (numpy.savez); a file this "
                         "compressible was not written by cnndsl")
        if key == "meta" and info.file_size > MAX_META:
            raise _corrupt(path, f"its metadata claims {info.file_size:,} bytes")
        entries[key] = info
    return entries


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: str):
    """One entry's array, its .npy header checked (dtype allowed for `key`, a shape whose
    size is exactly what the zip entry holds) before the data is read."""
    with archive.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, MAX_HEADER)
        else:
            raise _corrupt(path, f"the entry '{key}' has .npy format {version}")
        _check_dtype(dtype, key, path)
        if len(shape) > 32 or any(not isinstance(n, int) or n < 0 for n in shape):
            raise _corrupt(path, f"the entry '{key}' has the shape {shape}")
        if key == "meta" and len(shape) != 1:
            raise _corrupt(path, "its metadata is not a byte string")
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - fp.tell()
        if nbytes != held:
            raise _corrupt(path, f"the entry '{key}' declares {_shape(shape)} "
                                 f"{dtype.name} ({nbytes:,} bytes) but holds {held:,} bytes")
        data = np.empty(nbytes, dtype=np.uint8)
        view, done = memoryview(data), 0
        while done < nbytes:
            count = fp.readinto(view[done:done + 2**24])
            if not count:
                raise _corrupt(path, f"the entry '{key}' is truncated")
            done += count
        fp.read(1)  # reach the end of the entry, where zipfile checks its CRC
    array = data.view(dtype).reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _check_dtype(dtype: np.dtype, key: str, path: str) -> None:
    """float32/float64 arrays; integers for optimizer counters; bytes for the metadata."""
    if key == "meta":
        allowed = dtype == np.uint8
    elif dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        allowed = False
    elif key.startswith("optim/"):
        allowed = (dtype.kind == "f" and dtype.itemsize in (4, 8)) or dtype.kind in "iu"
    else:
        allowed = dtype.kind == "f" and dtype.itemsize in (4, 8)
    if not allowed:
        raise CheckpointError(
            f"'{path}': the entry '{key}' holds {dtype.descr if dtype.fields else dtype} "
            "values; a weights file holds float32 or float64 arrays",
            hint="it was not written by cnndsl, or was tampered with")


def _corrupt(path: str, detail: str) -> CheckpointError:
    return CheckpointError(f"'{path}' is not a readable weights file: {detail}",
                           hint="it may be truncated or corrupted; use an earlier copy "
                                "or train again")


def _not_cnndsl(path: str, detail: str) -> CheckpointError:
    return CheckpointError(f"'{path}' is not a cnndsl weights file: {detail}")


# ---- the metadata ------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _list_of(kind):
    return lambda value: isinstance(value, list) and all(kind(v) for v in value)


def _optional(kind):
    return lambda value: value is None or kind(value)


def _is(*types):
    return lambda value: isinstance(value, types)


#: what each metadata field must be: (test, description); absent fields are allowed
META_FIELDS = {
    "format": (_is(str), "a string"),
    "graph": (_is(dict), "an object"),
    "architecture": (_is(str), "a string"),
    "bindings": (lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
                 "an object of whole numbers"),
    "name": (_is(str), "a string"),
    "classes": (_list_of(_is(str)), "a list of strings"),
    "data": (_optional(_is(str)), "a string"),
    "run_data": (_is(dict), "an object"),
    "train_block": (_is(dict), "an object"),
    "input_shape": (_list_of(lambda v: _is_int(v) and v > 0), "a list of sizes > 0"),
    "config": (_is(dict), "an object"),
    "progress": (_is(dict), "an object"),
    "rng": (_is(dict), "an object"),
}
LAYER_FIELDS = {  # what `architecture.describe` writes and `first_difference` reads
    "name": (_is(str), "a string"),
    "op": (_is(str), "a string"),
    "arguments": (_is(dict), "an object"),
    "geometry": (_optional(_is(dict)), "an object"),
    "inputs": (_list_of(_is(str)), "a list of strings"),
    "shape": (_is(list), "a list"),
    "params": (lambda v: isinstance(v, dict) and all(isinstance(x, list) for x in v.values()),
               "an object of shapes"),
}
RUN_DATA_FIELDS = {
    "data": (_optional(_is(str)), "a string"),
    "limit": (_optional(lambda v: _is_int(v) and v >= 0), "a whole number >= 0"),
    "fingerprint": (_optional(_is(str)), "a string"),
}
PROGRESS_FIELDS = {
    "epoch": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "step": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "loss_sum": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "correct": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "seen": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "seconds": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "history": (_list_of(_is(dict)), "a list of objects"),
    "test": (_optional(_is(dict)), "an object"),
    "changes": (_list_of(_is(dict)), "a list of objects"),
}


def check_meta(meta, path: str) -> None:
    """Refuse metadata of the wrong shape: not an object, another format, or a field of
    the wrong type (`progress.epoch` must be a whole number, ...), naming the field."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}': its metadata is a JSON {_json_kind(meta)}, not an "
                              "object", hint="it was not written by cnndsl, or was tampered "
                                             "with")
    if meta.get("format") != FORMAT:
        shown = repr(meta.get("format"))[:60]
        raise CheckpointError(f"'{path}' has an unknown format {shown}")
    _check_fields(meta, META_FIELDS, "", path)
    _check_fields(meta.get("run_data") or {}, RUN_DATA_FIELDS, "run_data.", path)
    _check_fields(meta.get("progress") or {}, PROGRESS_FIELDS, "progress.", path)
    for block in ("config", "train_block"):
        _check_settings(meta.get(block) or {}, block, path)
    graph = meta.get("graph") or {}
    if graph.get("version") == architecture.VERSION:
        layers = graph.get("layers")
        if not isinstance(layers, list):
            raise bad_field(path, "graph.layers", "a list of layers", layers)
        for index, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise bad_field(path, f"graph.layers[{index}]", "an object", layer)
            _check_fields(layer, LAYER_FIELDS, f"graph.layers[{index}].", path)
            missing = [name for name in LAYER_FIELDS if name not in layer]
            if missing:
                raise bad_field(path, f"graph.layers[{index}].{missing[0]}", "present")


def _check_fields(document: dict, fields: dict, prefix: str, path: str) -> None:
    for name, (test, description) in fields.items():
        if name in document and not test(document[name]):
            raise bad_field(path, prefix + name, description, document[name])


def _check_settings(settings: dict, block: str, path: str) -> None:
    from cnndsl.trainconfig import KINDS as SETTINGS
    from cnndsl.trainconfig import convert

    for name, value in settings.items():
        if name not in SETTINGS or (name == "lr" and value is None):
            continue
        try:
            convert(name, value)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"'{path}': its metadata field '{block}.{name}' is "
                                  f"invalid: {error}",
                                  hint="it was not written by cnndsl, or was tampered "
                                       "with") from None


def bad_field(path: str, field: str, description: str, *value) -> CheckpointError:
    """'path': its metadata field 'progress.step' must be ..., got 7 (`value` optional)."""
    shown = ""
    if value:
        shown = json.dumps(value[0]) if _jsonable(value[0]) else repr(value[0])
        shown = f", got {shown[:60]}"
    return CheckpointError(f"'{path}': its metadata field '{field}' must be "
                           f"{description}{shown}",
                           hint="it was not written by cnndsl, or was tampered with")


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _json_kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


# ---- into a model -----------------------------------------------------------------------

def check_architecture(model, meta: dict, path: str, force: bool = False,
                       warn=None, force_flag: str = "--force") -> None:
    """Refuse weights trained in another graph than `model`'s, naming the first difference;
    with `force`, call `warn(message)` instead (the weights must still fit). `force_flag`
    is how the caller's user asks for `force` (`--force`, or `force=True` in Python)."""
    difference = _architecture_difference(model, meta, path)
    if difference is None:
        return
    if force:
        if warn is not None:
            warn(f"'{path}' was trained on another network ({difference}); loading it "
                 f"anyway because of {force_flag}")
        return
    if force_flag == "--force":
        hint = ("use the .cnn file (and --set bindings) it was trained with (its text is "
                "stored in the weights file: `cnndsl eval --weights W.npz` uses it), or "
                "--force to load them anyway")
    else:
        hint = ("use the network it was trained with (its text is stored in the weights "
                "file: cnndsl.checkpoint.load(path)[1]['architecture']), or "
                f"{force_flag} to load them anyway")
    raise CheckpointError(f"'{path}' holds weights of another network: {difference}",
                          hint=hint)


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
                  warn=None, force_flag: str = "--force") -> None:
    """Copy parameters and buffers into `model`, after checking they are its own: the same
    compiled graph (`check_architecture`), then the same names and shapes."""
    check_architecture(model, meta, path, force, warn, force_flag)
    for kind, expected in (("param", model.parameters()), ("buffer", model.buffers())):
        stored = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(kind + "/")}
        for name, array in expected.items():
            if name not in stored:
                raise _other_network(path, f"it has no {kind} '{name}'", stored)
            if stored[name].shape != array.shape:
                raise _other_network(path, f"'{name}' is {_shape(stored[name].shape)} there "
                                     f"but {_shape(array.shape)} here", stored)
            if stored[name].dtype != array.dtype:  # never a silent cast
                raise _other_network(path, f"'{name}' is {stored[name].dtype} there but "
                                     f"{array.dtype} here", stored)
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


def load_into(model, path: str, force: bool = False, warn=None,
              force_flag: str = "--force") -> dict:
    """Load the weights file at `path` into `model` (checked as `restore_model` does);
    returns its metadata."""
    arrays, meta = load(path)
    restore_model(model, arrays, meta, path, force, warn, force_flag)
    return meta
