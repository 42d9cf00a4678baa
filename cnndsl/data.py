"""Datasets for training and evaluation: everything a network is fed, as float32 arrays.

`load_dataset(spec)` accepts

1. a dataset name, `fashion-mnist` or `mnist`, searched in `$CNNDSL_DATA/NAME`,
   `~/.cache/cnndsl/NAME` and `/usr/share/datasets/NAME` (Debian's `dataset-fashion-mnist`);
2. a folder of MNIST-format IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, gzipped or not, `.idx3-ubyte` too);
3. a `.npz` file with `x_train, y_train, x_test, y_test` and optionally `classes`;
4. a folder of images, one folder per class: `DIR/train/<class>/*` and `DIR/test/<class>/*`,
   or `DIR/<class>/*` (a seeded sixth of each class is then held out as the test split).

Images come back channels-last, `x: N×H×W×C` float32 in [0, 1] (a 2-D input as docs/language.md
declares it), labels `y: N` int64. A file that cannot be used raises `DataError` naming the
file and what is wrong; no NumPy, gzip, zip or Pillow exception reaches the user.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CnnDslError, did_you_mean
from .source import NotRegularFile, file_kind, open_regular, printable

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# name -> (display name, class names)
KNOWN = {
    "fashion-mnist": ("Fashion-MNIST", FASHION_CLASSES),
    "mnist": ("MNIST", [str(i) for i in range(10)]),
}
ALIASES = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "mnist": "mnist"}
SYSTEM_DATA = Path("/usr/share/datasets")   # Debian's dataset-* packages install here
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
HOLDOUT_SEED = 0                             # the test split of a folder without test/
IDX_HINT = ("an MNIST-format folder holds train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be gzipped)")
FOLDER_HINT = ("put the images in one folder per class, DIR/<class>/*.png, or in "
               "DIR/train/<class>/ and DIR/test/<class>/")
# what a file can legitimately hold, checked before anything is allocated: a small file must
# not become gigabytes (a gzip or zip bomb, a header declaring 10^12 elements, label 10^9)
MAX_CLASSES = 100_000
MAX_ARRAY_BYTES = 2**31           # one IDX body or .npz array, uncompressed
MAX_DATASET_PIXELS = 4096 * 4096  # one image of an image-folder dataset


class DataError(CnnDslError):
    """A dataset that cannot be used: message names the file and what is wrong; hint says
    what to do. `path` is the offending file or folder when there is one."""

    def __init__(self, message: str, hint: str | None = None, path: str | os.PathLike | None = None):
        # file and class names come from the user's files: no raw terminal escapes
        super().__init__(printable(message, keep="\n"),
                         None, None if hint is None else printable(hint, keep="\n"))
        self.path = None if path is None else str(path)


@dataclass
class Dataset:
    x_train: np.ndarray   # float32 (N, *shape) channels-last, pixels in [0, 1]
    y_train: np.ndarray   # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]    # class i is classes[i]
    source: str           # the file or folder it came from
    name: str = ""        # for messages: "Fashion-MNIST", "cifar.npz", "photos"
    notes: list[str] = field(default_factory=list)   # what loading did that a user should know

    @property
    def shape(self) -> tuple:
        """One example's shape, as the network's `input` must declare it."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------- dispatch

def load_dataset(spec: str | os.PathLike) -> Dataset:
    """A dataset from a name, an IDX folder, an .npz file or a folder of class folders."""
    if not isinstance(spec, (str, os.PathLike)):   # e.g. a weights file's metadata
        raise DataError(f"a dataset is named by a string, not {type(spec).__name__} "
                        f"{str(spec)[:60]}")
    text = os.fspath(spec)
    key = ALIASES.get(text.strip().lower().replace("_", "-"))
    if key and not _looks_like_path(text):
        return _load_named(key)
    path = Path(text).expanduser()
    if path.is_dir():
        if any(_idx_files(path).values()):
            return _load_idx_folder(path, ALIASES.get(path.name.lower().replace("_", "-")))
        return _load_image_folder(path)
    if path.is_file():
        return _load_npz(path)
    if path.exists():   # a FIFO, a device, a socket: reading it would block or never end
        raise DataError(f"{text}: cannot read it: {_kind(path)}, not a regular file",
                        hint="give an .npz file or a folder", path=text)
    if _looks_like_path(text) or path.suffix:
        raise DataError(f"{text}: no such file or folder", path=text)
    hint = did_you_mean(text, KNOWN, "a dataset name")
    raise DataError(f"no dataset '{text}': it is neither a file, a folder, nor a known name "
                    f"({', '.join(KNOWN)})",
                    hint=hint or "give a dataset name, a folder of IDX files or of class "
                                 "folders, or an .npz file", path=text)


def _kind(path: Path) -> str:
    return f"it is {file_kind(path.stat().st_mode)}"


@contextmanager
def _opened(path: Path):
    """The regular file at path, opened for binary reading; DataError otherwise."""
    try:
        handle = open_regular(path)
    except NotRegularFile as e:
        raise DataError(f"{path}: cannot read it: {e.strerror}", path=path) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})", path=path) from None
    with handle:
        yield handle


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith(("~", "."))


def search_dirs(name: str) -> list[Path]:
    """Where the named dataset is looked for, in order."""
    dirs = []
    if os.environ.get("CNNDSL_DATA"):
        dirs.append(Path(os.environ["CNNDSL_DATA"]).expanduser() / name)
    dirs.append(Path.home() / ".cache" / "cnndsl" / name)
    dirs.append(SYSTEM_DATA / name)
    return dirs


def _load_named(key: str) -> Dataset:
    display, _ = KNOWN[key]
    dirs = search_dirs(key)
    for d in dirs:
        if d.is_dir() and all(f is not None for f in _idx_files(d).values()):
            return _load_idx_folder(d, key)
    found = [d for d in dirs if d.is_dir()]
    lines = [f"{d}{' (incomplete)' if d in found else ''}" for d in dirs]
    if key == "fashion-mnist":
        hint = (f"install it with `apt-get install dataset-fashion-mnist` (into {SYSTEM_DATA}/"
                f"{key}), or put its four IDX files in {dirs[-2]} or $CNNDSL_DATA/{key}")
    else:
        hint = (f"download the four {display} IDX files (train-images-idx3-ubyte.gz, "
                f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                f"t10k-labels-idx1-ubyte.gz) into {dirs[-2]} or $CNNDSL_DATA/{key}")
    raise DataError(f"{display} not found; searched {', '.join(lines)}", hint=hint)


# ---------------------------------------------------------------------------- IDX

def _idx_names(split: str, kind: str) -> list[str]:
    d = 3 if kind == "images" else 1
    bases = [f"{split}-{kind}-idx{d}-ubyte", f"{split}-{kind}.idx{d}-ubyte"]
    return [b + gz for b in bases for gz in ("", ".gz")]


def _idx_files(folder: Path) -> dict[str, Path | None]:
    """{'train-images': path or None, ...} for the four files of an MNIST-format folder."""
    found: dict[str, Path | None] = {}
    for split, aliases in (("train", ("train",)), ("t10k", ("t10k", "test"))):
        for kind in ("images", "labels"):
            hits = [folder / n for a in aliases for n in _idx_names(a, kind)
                    if (folder / n).exists() and not (folder / n).is_dir()]
            found[f"{split}-{kind}"] = hits[0] if hits else None
    return found


def _load_idx_folder(folder: Path, key: str | None) -> Dataset:
    files = _idx_files(folder)
    missing = [k for k, p in files.items() if p is None]
    if missing:
        names = ", ".join(f"{m}-idx{3 if m.endswith('images') else 1}-ubyte[.gz]"
                          for m in missing)
        raise DataError(f"{folder}: missing the IDX file(s) {names}", hint=IDX_HINT, path=folder)
    x_train, y_train = _idx_pair(files["train-images"], files["train-labels"])
    x_test, y_test = _idx_pair(files["t10k-images"], files["t10k-labels"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{files['t10k-images']}: images are {_fmt(x_test.shape[1:])} but the "
                        f"training images are {_fmt(x_train.shape[1:])}",
                        hint="the train and test images must have one size",
                        path=files["t10k-images"])
    if key is not None:
        display, classes = KNOWN[key]
        for y, p in ((y_train, files["train-labels"]), (y_test, files["t10k-labels"])):
            _check_labels(y, len(classes), p, display)
    else:
        display = folder.name or str(folder)
        classes = [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
    return Dataset(_scale_u8(x_train), y_train.astype(np.int64), _scale_u8(x_test),
                   y_test.astype(np.int64), list(classes), str(folder), display)


def _idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels",
                        hint="the image and label files of a split must come from the same set",
                        path=labels)
    return x, y


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file (gzipped or raw): magic 0x0000080<ndim>, then ndim
    big-endian uint32 sizes, then the bytes. ndim=3: images (N, H, W); ndim=1: labels (N,).
    Reads the header first and then exactly the bytes it declares (at most MAX_ARRAY_BYTES),
    streaming, so a gzip bomb is refused after a few bytes more than the header allows."""
    what = "image" if ndim == 3 else "label"
    hint = f"{path.name} should be an IDX {what} file; " + IDX_HINT
    with _opened(path) as handle:
        zipped = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if zipped else handle
        try:
            return _read_idx(stream, path, ndim, what, hint,
                             None if zipped else os.fstat(handle.fileno()).st_size)
        except EOFError:
            reason = "the compressed data end early (truncated)"
        except (OSError, zlib.error) as e:
            if not zipped:
                raise DataError(f"{path}: cannot read it ({e})", path=path) from None
            reason = f"corrupt gzip data: {e}"
    raise DataError(f"{path}: cannot decompress it: {reason}",
                    hint="download the file again", path=path)


def _read_idx(stream, path: Path, ndim: int, what: str, hint: str,
              file_size: int | None) -> np.ndarray:
    """read_idx on an open stream; file_size is None when the stream is gunzipped."""
    header = 4 + 4 * ndim
    raw = _read_exactly(stream, header).tobytes()
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX file",
                        hint=hint, path=path)
    magic, want = int.from_bytes(raw[:4], "big"), 0x800 | ndim
    if magic != want:
        other = {0x801: " (that of a label file)", 0x803: " (that of an image file)"}
        raise DataError(f"{path}: magic number 0x{magic:08X}{other.get(magic, '')}, expected "
                        f"0x{want:08X} for an IDX {what} file", hint=hint, path=path)
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside its header ({len(raw)} of {header} bytes)",
                        hint=hint, path=path)
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    described = " x ".join(map(str, dims))
    size = 1
    for d in dims:
        size *= d
    if size > MAX_ARRAY_BYTES:
        raise DataError(f"{path}: its header declares {described} = {size:,} bytes of data, "
                        f"more than the {_gb(MAX_ARRAY_BYTES)} cnndsl reads from one file",
                        hint="the header is corrupt, or the data set is too large; "
                             "download the file again", path=path)
    if file_size is not None and file_size - header != size:
        body = file_size - header   # a raw file: its size tells, nothing read yet
    else:
        data = _read_exactly(stream, size)
        body = len(data)
        if body == size:
            extra = len(_read_exactly(stream, 2**20 + 1))
            body += extra
    if body < size:
        raise DataError(f"{path}: truncated: its header says {described} "
                        f"({size} bytes of data) but it holds {body}",
                        hint="download the file again", path=path)
    if body > size:
        more = body - size
        count = f"more than {2**20:,}" if file_size is None and more > 2**20 else str(more)
        raise DataError(f"{path}: {count} unexpected bytes after the {described} its header "
                        "describes", hint="download the file again", path=path)
    if 0 in dims:
        raise DataError(f"{path}: holds no {what}s (its header says {described})",
                        hint=hint, path=path)
    return data.reshape(dims)


def _read_exactly(stream, n: int) -> np.ndarray:
    """The next n bytes of stream as uint8 (fewer at its end), read into one buffer."""
    out = np.empty(n, np.uint8)   # pages are touched only as data arrive
    view, got = memoryview(out), 0
    while got < n:
        k = stream.readinto(view[got:got + 2**24])
        if not k:
            break
        got += k
    return out[:got]


def _gb(n: int) -> str:
    return f"{n / 2**30:g} GB"


def _check_labels(y: np.ndarray, k: int, path, owner: str, key: str = "") -> None:
    bad = np.flatnonzero((y < 0) | (y >= k))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: {key + ' ' if key else ''}label {y[i]} (example {i}) is out of range: {owner} has {k} "
                        f"classes (0..{k - 1}); {bad.size} label(s) are outside",
                        hint="check that the labels belong to these images", path=path)


def _scale_u8(x: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, ..., C) -> float32 in [0, 1], a channel axis added to 3-D."""
    if x.ndim == 3:
        x = x[..., None]
    out = x.astype(np.float32)
    out /= 255
    return out


# ---------------------------------------------------------------------------- npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_HINT = ("save it with np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...), "
            "images as (N, H, W) or (N, H, W, C)")
# a damaged zip or .npy header can raise any of these from inside zipfile and numpy
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
               struct.error, NotImplementedError, RuntimeError, MemoryError)


def _load_npz(path: Path) -> Dataset:
    with _opened(path) as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise DataError(f"{path}: holds a single array, not the arrays "
                            f"{', '.join(NPZ_KEYS)}", hint=NPZ_HINT, path=path)
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except _NPZ_ERRORS as e:
            raise DataError(f"{path}: not a readable .npz file ({_reason(e)})",
                            hint=NPZ_HINT, path=path) from None
        with archive:
            members = {i.filename.removesuffix(".npy"): i for i in archive.infolist()}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise DataError(f"{path}: missing the array(s) {', '.join(missing)} (it holds "
                                f"{', '.join(members) or 'nothing'})", hint=NPZ_HINT, path=path)
            arrays = {k: _npz_member(archive, members[k], k, path)
                      for k in NPZ_KEYS + (("classes",) if "classes" in members else ())}
    notes: list[str] = []
    x_train = _npz_images(arrays["x_train"], "x_train", path, notes)
    x_test = _npz_images(arrays["x_test"], "x_test", path, notes)
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), path)
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: x_train examples are {_fmt(x_train.shape[1:])} but x_test "
                        f"examples are {_fmt(x_test.shape[1:])}",
                        hint="the train and test images must have one shape", path=path)
    top = int(max(y_train.max(), y_test.max()))
    if "classes" in arrays:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "US":
            raise DataError(f"{path}: 'classes' must be a 1-D array of strings, not "
                            f"{c.dtype} {c.shape}", hint="np.savez(..., classes=np.array(names))",
                            path=path)
        if len(c) > MAX_CLASSES:
            raise DataError(f"{path}: 'classes' names {len(c):,} classes; cnndsl handles at "
                            f"most {MAX_CLASSES:,}", path=path)
        classes = [printable(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                   for v in c.tolist()]
        for y, k in ((y_train, "y_train"), (y_test, "y_test")):
            _check_labels(y, len(classes), path, "its 'classes' array", k)
    else:
        classes = [f"class {i}" for i in range(top + 1)]
    return Dataset(x_train, y_train, x_test, y_test, classes, str(path), path.name, notes)


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                path: Path) -> np.ndarray:
    """One array of an .npz, its .npy header checked before any data are read: a plain
    dtype (never object, structured, complex or datetime), a size within MAX_ARRAY_BYTES
    that the zip member really holds. zipfile stops decompressing at the member's declared
    size, so a member that inflates to more is cut off there (and fails its CRC)."""
    where = f"{path}: array '{key}'"
    if info.file_size > MAX_ARRAY_BYTES + 2**16:
        raise DataError(f"{where} declares {info.file_size:,} bytes uncompressed, more than "
                        f"the {_gb(MAX_ARRAY_BYTES)} cnndsl reads for one array",
                        hint="the file is corrupt, or the data set is too large", path=path)
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:   # version 3.0: utf-8 field names, same layout
                shape, fortran, dtype = np.lib.format._read_array_header(member, version)
            else:
                shape, fortran, dtype = read_header(member)
            _check_npy_dtype(dtype, where, key, path)
            if dtype.itemsize == 0:
                raise DataError(f"{where} has dtype {dtype}, of zero bytes per element",
                                hint=NPZ_HINT, path=path)
            count = 1
            for d in shape:
                count *= d
            nbytes = count * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES:
                raise DataError(f"{where} declares shape {shape} of {dtype}, {nbytes:,} bytes, "
                                f"more than the {_gb(MAX_ARRAY_BYTES)} cnndsl reads for one "
                                "array", hint="the file is corrupt, or the data set is too "
                                              "large", path=path)
            held = info.file_size - member.tell()
            if nbytes != held:
                raise DataError(f"{where} declares shape {shape} of {dtype} ({nbytes:,} bytes) "
                                f"but its member holds {held:,} bytes of data",
                                hint="the file is corrupt or truncated; save it again",
                                path=path)
            data = _read_exactly(member, nbytes)
            member.read(1)   # reaches the end of the member, where zipfile checks the CRC
    except DataError:
        raise
    except _NPZ_ERRORS as e:
        raise DataError(f"{path}: cannot read its array '{key}' ({_reason(e)})",
                        hint="the file is corrupt or truncated; save it again",
                        path=path) from None
    if len(data) != nbytes:
        raise DataError(f"{path}: cannot read its array '{key}' (it ends early)",
                        hint="the file is corrupt or truncated; save it again", path=path)
    return data.view(dtype).reshape(shape, order="F" if fortran else "C")


def _check_npy_dtype(dtype: np.dtype, where: str, key: str, path: Path) -> None:
    kinds = {"O": "object (pickled Python objects, never loaded)",
             "V": "structured or raw bytes", "c": "complex", "M": "datetime",
             "m": "timedelta"}
    if dtype.hasobject or dtype.fields is not None or dtype.kind in kinds:
        kind = "object (pickled Python objects, never loaded)" if dtype.hasobject \
            else kinds.get(dtype.kind, "structured")
        wanted = "strings" if key == "classes" else "integers" if key.startswith("y") \
            else "uint8 or float pixels"
        raise DataError(f"{where} has dtype {dtype}, which is {kind}; expected {wanted}",
                        hint=NPZ_HINT, path=path)


def _reason(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "it ends early"
    return str(e) or type(e).__name__


def _npz_images(x: np.ndarray, key: str, path: Path, notes: list[str]) -> np.ndarray:
    where = f"{path}: {key}"
    if x.ndim < 2:
        raise DataError(f"{where} has shape {x.shape}; expected (N, H, W) or (N, H, W, C)",
                        hint=NPZ_HINT, path=path)
    if len(x) == 0:
        raise DataError(f"{where} holds no examples", hint=NPZ_HINT, path=path)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
        raise DataError(f"{where} has shape {x.shape}, which looks channels-first (N, C, H, W); "
                        "cnndsl wants channels-last (N, H, W, C)",
                        hint=f"save {key}.transpose(0, 2, 3, 1)", path=path)
    kind = x.dtype.kind
    if kind in "ui":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{where} is {x.dtype} with values {lo}..{hi}; integer pixels "
                            "must be 0..255", hint="save uint8 pixels, or floats in [0, 1]",
                            path=path)
        out = x.astype(np.float32)
        out /= 255
    elif kind == "b":
        out = x.astype(np.float32)
    elif kind == "f":
        out = x.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{where} holds NaN or infinite values", path=path)
        lo, hi = float(out.min()), float(out.max())
        if lo < 0 or hi > 1:
            notes.append(f"{path.name}: {key} values span [{lo:g}, {hi:g}], not [0, 1]; "
                         "they are used as given")
    else:
        raise DataError(f"{where} has dtype {x.dtype}; expected uint8 or float pixels",
                        hint=NPZ_HINT, path=path)
    # kept as saved: (N, H, W) may be grayscale images or 1-D signals of W channels, so a
    # missing channel axis is added by check_against, which knows the network's input
    return np.ascontiguousarray(out)


def _npz_labels(y: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    where = f"{path}: {key}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} has shape {y.shape}; expected one class index per example, "
                        f"shape ({n},)",
                        hint=f"for one-hot labels save np.argmax({key}, axis=1)", path=path)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.float64)   # integral floats: checked as numbers, then cast
    elif y.dtype.kind not in "uib":
        raise DataError(f"{where} has dtype {y.dtype}; expected integer class indices",
                        hint="save the labels as integers 0..K-1", path=path)
    if len(y) != n:
        x_key = key.replace("y_", "x_")
        raise DataError(f"{path}: {x_key} holds {n} examples but {key} holds {len(y)} labels",
                        hint="each image needs exactly one label", path=path)
    if len(y):   # the true values, before a cast can wrap 2^64-1 to -1
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise DataError(f"{where} holds a negative label ({lo}, example "
                            f"{int(np.argmin(y))})",
                            hint="labels are class indices 0..K-1", path=path)
        if hi >= MAX_CLASSES:
            raise DataError(f"{where} holds the label {hi} (example {int(np.argmax(y))}), "
                            f"but cnndsl handles at most {MAX_CLASSES:,} classes (labels "
                            f"0..{MAX_CLASSES - 1})",
                            hint="labels are class indices 0..K-1, one per class", path=path)
    return y.astype(np.int64)


# ---------------------------------------------------------------------------- image folders

def _load_image_folder(root: Path) -> Dataset:
    subdirs = {p.name.lower(): p for p in _subdirs(root)}
    notes: list[str] = []
    links = _Links(root, notes)
    if "train" in subdirs:
        train_dir, test_dir = subdirs["train"], subdirs.get("test")
        classes = [p.name for p in links.class_dirs(train_dir)]
        if not classes:
            raise DataError(f"{train_dir}: no class folders in it", hint=FOLDER_HINT,
                            path=train_dir)
        train = _scan_classes(train_dir, classes, notes, links, allow_empty=False)
        if test_dir is not None:
            extra = sorted({p.name for p in _subdirs(test_dir)} - set(classes))
            if extra:
                raise DataError(f"{test_dir}: class folder(s) {', '.join(extra)} have no "
                                f"counterpart in {train_dir}",
                                hint="the test classes must be among the training classes",
                                path=test_dir)
            test = _scan_classes(test_dir, classes, notes, links, allow_empty=True)
            if not test:
                raise DataError(f"{test_dir}: no images in it", hint=FOLDER_HINT, path=test_dir)
        else:
            train, test = _hold_out(train, root, notes)
    else:
        classes = [p.name for p in links.class_dirs(root)]
        if not classes:
            raise DataError(f"{root}: holds neither MNIST-format IDX files nor class folders",
                            hint=FOLDER_HINT + "; or " + IDX_HINT, path=root)
        train, test = _hold_out(_scan_classes(root, classes, notes, links, allow_empty=False),
                                root, notes)
    channels, (h, w) = _survey([p for p, _ in train + test])
    x_train, x_test = (_read_all([p for p, _ in part], h, w, channels) for part in (train, test))
    y_train, y_test = (np.array([c for _, c in part], np.int64) for part in (train, test))
    return Dataset(x_train, y_train, x_test, y_test, [printable(c) for c in classes],
                   str(root), root.name or str(root), notes)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


class _Links:
    """Where class folders and images really are, so that a symbolic link neither reads
    what lies outside the dataset nor one folder or file twice (under two labels)."""

    def __init__(self, root: Path, notes: list[str]):
        self.root, self.real_root, self.notes = root, root.resolve(), notes
        self.seen: dict[Path, Path] = {}   # real path -> the path it was first read as

    def class_dirs(self, folder: Path) -> list[Path]:
        """The class folders of folder by name, real folders taking precedence over links."""
        ordered = sorted(_subdirs(folder), key=lambda p: (p.is_symlink(), p.name))
        return sorted((d for d in ordered if self.usable(d, note=True)), key=lambda p: p.name)

    def usable(self, path: Path, note: bool) -> bool:
        """False (with a note if asked) for a link outside the root or to a path seen."""
        real = path.resolve()
        if real != self.real_root and not real.is_relative_to(self.real_root):
            if note:
                self.notes.append(f"{path}: skipped: a link to {real}, outside {self.root}")
            return False
        first = self.seen.setdefault(real, path)
        if first != path:
            if note:
                self.notes.append(f"{path}: skipped: a link to {first}, which is already read")
            return False
        return True


def _scan_classes(folder: Path, classes: list[str], notes: list[str], links: _Links,
                  allow_empty: bool) -> list[tuple[Path, int]]:
    """(file, class index) for every image under folder/<class>/, in a stable order."""
    found, ignored = [], Counter()
    for ci, name in enumerate(classes):
        d = folder / name
        usable = d.is_dir() and links.usable(d, note=True)
        files = [] if not usable else sorted(
            p for p in d.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(d).parts))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored.update(p.suffix.lower() or p.name for p in files
                       if p.suffix.lower() not in IMAGE_SUFFIXES)
        found.append((d, name, ci, images))
    # plain files first (rglob does not enter linked folders, so their real paths are known
    # without a system call), then the links, which are dropped if they lead to one of them
    for d, _, _, images in found:
        real = d.resolve()
        for p in images:
            if not p.is_symlink():
                links.seen.setdefault(real / p.relative_to(d), p)
    items, linked = [], 0
    for d, name, ci, images in found:
        kept = [p for p in images if not p.is_symlink() or links.usable(p, note=False)]
        linked += len(images) - len(kept)
        if not kept and not allow_empty:
            raise DataError(f"{d}: class '{name}' has no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})",
                            hint="remove the folder or put images in it", path=d)
        items += [(p, ci) for p in kept]
    if ignored:
        kinds = ", ".join(sorted(ignored))
        notes.append(f"{folder}: ignored {sum(ignored.values())} file(s) that are not images "
                     f"({kinds})")
    if linked:
        notes.append(f"{folder}: skipped {linked} image(s) that are links to files outside "
                     f"{links.root} or to images already read")
    return items


def _hold_out(items, root: Path, notes: list[str]):
    """Per class, a seeded sixth of the files becomes the test split (at least one class
    example stays in training)."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    train, test = [], []
    for c in sorted({c for _, c in items}):
        mine = [it for it in items if it[1] == c]
        k = min((len(mine) + 3) // 6, len(mine) - 1)
        chosen = set(rng.permutation(len(mine))[:k].tolist())
        for i, it in enumerate(mine):
            (test if i in chosen else train).append(it)
    if not test:
        raise DataError(f"{root}: too few images to hold out a test split "
                        f"({len(items)} in all)",
                        hint="add images, or give DIR/train/ and DIR/test/ folders", path=root)
    notes.append(f"{root}: no test/ folder, so {len(test)} of {len(items)} images (a sixth of "
                 f"each class, seed {HOLDOUT_SEED}) are held out as the test split")
    return train, test


# what a damaged or hostile image file makes Pillow raise
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


@contextmanager
def _image(path: Path, max_pixels: int | None):
    """Image.open on a regular file, refusing more than max_pixels (None: Pillow's own
    limit) as a DataError: Pillow's DecompressionBombWarning becomes an error too."""
    from PIL import Image

    try:
        handle = open_regular(path)
    except NotRegularFile as e:
        if e.kind == "a directory":
            raise DataError(f"{path}: is a folder, not an image", path=path) from None
        raise DataError(f"{path}: cannot read it: {e.strerror}",
                        hint="give image files (PNG, JPEG, ...)", path=path) from None
    with handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(handle)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: refused: it declares more pixels than an image cnndsl "
                            f"reads ({e})", hint="resize the image", path=path) from None
        with img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise DataError(f"{path}: refused: it is {img.height}x{img.width} = "
                                f"{img.width * img.height:,} pixels, more than the "
                                f"{max_pixels:,} of a dataset image",
                                hint="resize the images", path=path)
            yield img


def _survey(paths: list[Path]) -> tuple[int, tuple[int, int]]:
    """Channels (1 if every image is grayscale, else 3) and the one size (H, W) they share;
    reads only the headers."""
    sizes, colour = {}, False
    for p in paths:
        try:
            with _image(p, MAX_DATASET_PIXELS) as img:
                sizes[p] = (img.height, img.width)
                colour = colour or not _is_gray(img.mode)
        except _IMAGE_ERRORS as e:
            raise DataError(f"{p}: not an image Pillow can read ({e})",
                            hint="remove or replace the file", path=p) from None
    (hw, count), = Counter(sizes.values()).most_common(1)
    odd = [p for p, s in sizes.items() if s != hw]
    if odd:
        raise DataError(f"{odd[0]}: image is {_fmt(sizes[odd[0]])} but {count} of {len(paths)} "
                        f"images are {_fmt(hw)} ({len(odd)} differ)",
                        hint="resize all images to one size", path=odd[0])
    return (3 if colour else 1), hw


def _read_all(paths: list[Path], h: int, w: int, channels: int) -> np.ndarray:
    out = np.empty((len(paths), h, w, channels), np.float32)
    for i, p in enumerate(paths):
        try:
            with _image(p, MAX_DATASET_PIXELS) as img:
                out[i] = _pixels(img, channels)
        except _IMAGE_ERRORS as e:
            raise DataError(f"{p}: cannot read the image ({e})",
                            hint="the file is corrupt or truncated; remove or replace it",
                            path=p) from None
    return out


# ---------------------------------------------------------------------------- pixels

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode.startswith("I;")


def _pixels(img, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A Pillow image as float32 (H, W, channels) in [0, 1], resized to size=(H, W) if given.
    16-bit grayscale is scaled by 65535 (Pillow's convert("L") would clip it)."""
    from PIL import Image

    wide = img.mode.startswith("I") or img.mode == "F"
    if wide:   # 16/32-bit integer or float grayscale: scale by hand, keep as float 'F'
        a = np.asarray(img, dtype=np.float32)
        a = a / 65535 if img.mode.startswith("I") else a / 255 if a.max() > 1 else a
        img = Image.fromarray(np.clip(a, 0, 1).astype(np.float32))
    if not wide:
        img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32)
    if not wide:
        a = a / 255
    a = a.reshape(a.shape[0], a.shape[1], -1)
    if a.shape[2] != channels:   # 'F' gray read for an RGB input
        a = np.repeat(a, channels, axis=2)
    return a


def load_images(paths, input_shape) -> tuple[np.ndarray, list[str]]:
    """Image files (PNG, JPEG, ... via Pillow) as (N, H, W, C) float32 in [0, 1] for a network
    whose `input` is input_shape = (H, W, C), C 1 or 3; returns (x, notes), one note per
    image that was resized or converted between colour and grayscale."""
    from PIL import Image, ImageOps

    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise DataError(f"cannot read images for a network whose input is {_fmt(shape)}",
                        hint="images are read for a 2-D input HxWx1 (grayscale) or HxWx3 (RGB)")
    h, w, c = shape
    out = np.empty((len(paths), h, w, c), np.float32)
    notes = []
    for i, p in enumerate(map(Path, paths)):
        try:
            with _image(p, None) as img:
                img = ImageOps.exif_transpose(img)
                gray = _is_gray(img.mode)
                out[i] = _pixels(img, c, (h, w))
                if (img.height, img.width) != (h, w):
                    notes.append(f"{p}: resized from {img.height}x{img.width} to {h}x{w}")
                if gray != (c == 1):
                    notes.append(f"{p}: converted " + ("grayscale to RGB" if gray
                                                       else "colour to grayscale"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such file", path=p) from None
        except IsADirectoryError:
            raise DataError(f"{p}: is a folder, not an image", path=p) from None
        except _IMAGE_ERRORS + (Image.DecompressionBombError,) as e:
            raise DataError(f"{p}: not an image Pillow can read ({e})",
                            hint="give PNG or JPEG files", path=p) from None
    return out, [printable(note) for note in notes]


# ---------------------------------------------------------------------------- checks

def check_against(data: Dataset, input_shape: tuple, output_shape: tuple) -> list[str]:
    """Raise DataError unless the network's input is one example's shape and its output a
    flat vector of at least len(data.classes) scores; return warnings (including the
    dataset's loading notes). Examples saved without a trailing channel axis of 1 ((N, L)
    for an `L x 1` input, (N, H, W) for `H x W x 1`, (N, D, H, W) for `D x H x W x 1`)
    get one, in `data` itself."""
    have, want = tuple(data.shape), tuple(int(s) for s in input_shape)
    name = data.name or data.source
    if have != want and have + (1,) == want:
        data.x_train, data.x_test = data.x_train[..., None], data.x_test[..., None]
        have = tuple(data.shape)
    if have != want:
        what = "images" if len(have) > 1 else "examples"
        hint = f"change `input` to {_fmt(have)}"
        if len(have) == 1 and have[0] != 1:
            hint = (f"change `input` to {_fmt(have + (1,))} (a 1-D signal of one channel), "
                    f"or to {_fmt(have)} (a flat vector)")
        elif len(have) in (2, 3) and have[-1] != 1:
            hint = (f"change `input` to {_fmt(have + (1,))} (one channel), or to "
                    f"{_fmt(have)} if the last axis holds channels")
        if len(have) == len(want) and have[:-1] == want[:-1]:
            message = (f"{name} images have {_plural(have[-1], 'channel')} ({_fmt(have)}) but "
                       f"the network's input has {want[-1]} ({_fmt(want)})")
        else:
            message = f"{name} {what} are {_fmt(have)} but the network's input is {_fmt(want)}"
            if sorted(have) == sorted(want) and len(want) > 1 and want[0] == have[-1]:
                hint += " (the last number of `input` is the channel count)"
            elif len(want) == 1 and want[0] == int(np.prod(have)):
                hint += " (FC flattens a spatial input by itself)"
            elif len(have) == 1 and have[0] == int(np.prod(want)):
                hint = (f"the data are flat vectors: save them shaped (N, {', '.join(map(str, want))})"
                        f" or change `input` to {have[0]}")
            elif len(have) == len(want):
                hint += f", or resize the {what} to {_fmt(want)}"
        raise DataError(message, hint=hint, path=data.source)
    out = tuple(int(s) for s in output_shape)
    k = len(data.classes)
    if len(out) != 1:
        raise DataError(f"the network's output is {_fmt(out)}, but a classifier of {name}'s "
                        f"{k} classes needs a flat vector of {k} class scores",
                        hint=f"end the network with FC({k}) (and Softmax)")
    if out[0] < k:
        raise DataError(f"the network has {_plural(out[0], 'output')} but {name} has {k} classes",
                        hint=f"make the last layer FC({k})")
    warnings = [printable(note) for note in data.notes]   # they name the user's files
    if out[0] > k:
        warnings.append(f"the network has {out[0]} outputs but the data has {k} classes "
                        f"(outputs {k}..{out[0] - 1} are never a correct answer)")
    return warnings


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): a seeded random `fraction` of the examples (at least
    one when fraction > 0, never all) becomes the validation set; both parts keep the
    original order. Deterministic for a given seed. fraction outside [0, 1) is a ValueError
    (the caller validates its flag)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(x)
    k = round(fraction * n)
    if fraction > 0:
        k = max(k, 1)
    k = min(k, n - 1) if n else 0
    val = np.zeros(n, bool)
    val[np.random.default_rng(seed).permutation(n)[:k]] = True
    return x[~val], y[~val], x[val], y[val]


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def fingerprint(*arrays: np.ndarray) -> str:
    """A short hash that changes when the data change: shapes, every label, and a sample of
    at most 512 examples per array (hashing every pixel of a large set would cost a second
    per run)."""
    digest = hashlib.blake2b(digest_size=12)
    for array in arrays:
        digest.update(repr((array.shape, str(array.dtype))).encode())
        step = 1 if array.ndim == 1 else max(1, len(array) // 512)  # labels: all of them
        digest.update(np.ascontiguousarray(array[::step]).tobytes())
    return digest.hexdigest()
