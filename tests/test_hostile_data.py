"""Hostile data and source files (issue 11): each case runs the real `cnndsl` command in a
subprocess under a timeout, measures its peak memory, and wants exit status 1 (never 3, an
internal error) with a message naming the file, no traceback, within seconds.

Every hostile file is generated here, in a temporary folder, from a few bytes of code."""

import os
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from measure import run_measured
from PIL import Image

NET = """network Small
input 8x8x1
train { optimizer = adam, lr = 0.01, batch = 16, epochs = 1 }
Conv(4, 3) -> ReLU -> MaxPool(2) -> FC(K) -> Softmax
"""
MB = 2**20
def cnndsl(*args, cwd, timeout=60, address_space=None, status=1, max_mb=600):
    """Run `python -m cnndsl.cli ARGS`; check the exit status, that no traceback or internal
    error shows, the time and the peak memory; return (stdout, stderr)."""
    code, out, err, peak, seconds = run_measured(
        [sys.executable, "-m", "cnndsl.cli", *map(str, args)], cwd, timeout, address_space)
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == status, (code, out, err)
    assert peak < max_mb, f"peak memory {peak:.0f} MB"
    assert seconds < timeout / 2, f"{seconds:.1f} s"
    return out, err


def small_npz(path, n=48, n_test=12, k=3, **override):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((n, 8, 8, 1), dtype=np.float32),
              "y_train": np.arange(n) % k,
              "x_test": rng.random((n_test, 8, 8, 1), dtype=np.float32),
              "y_test": np.arange(n_test) % k}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with small.cnn (3 classes), data.npz and w.npz trained from them."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "small.cnn").write_text(NET.replace("FC(K)", "FC(3)"))
    small_npz(folder / "data.npz")
    cnndsl("train", "small.cnn", "--data", "data.npz", "-o", "w.npz", "--no-progress",
           cwd=folder, status=0, timeout=120)
    return folder


@pytest.fixture
def copy(trained, tmp_path):
    """A private copy of the trained folder, whose files a test may replace."""
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    return folder


# ---- 1. labels: checked against a cap before 10^9 class names are made -------------------

def test_label_of_a_billion_is_refused_before_allocating(copy):
    small_npz(copy / "big.npz", y_train=np.r_[np.zeros(47, np.int64), 10**9])
    _, err = cnndsl("train", "small.cnn", "--data", "big.npz", "-o", "x.npz", cwd=copy)
    assert "big.npz: y_train holds the label 1000000000 (example 47)" in err
    assert "at most 100,000 classes" in err


def test_eval_of_weights_whose_dataset_has_such_a_label(copy):
    small_npz(copy / "data.npz", y_test=np.r_[np.zeros(11, np.int64), 10**9])  # meta: data.npz
    _, err = cnndsl("eval", "small.cnn", "--weights", "w.npz", cwd=copy)
    assert "data.npz: y_test holds the label 1000000000" in err


def test_uint64_label_is_reported_with_its_true_value(copy):
    y = np.zeros(48, np.uint64)
    y[5] = 2**64 - 1
    small_npz(copy / "u.npz", y_train=y)
    _, err = cnndsl("train", "small.cnn", "--data", "u.npz", "-o", "x.npz", cwd=copy)
    assert "u.npz: y_train holds the label 18446744073709551615 (example 5)" in err
    assert "negative" not in err


# ---- 2. IDX: a gzip bomb is read only as far as its header allows ------------------------

def idx_folder(folder: Path, images_gz: bytes):
    """An MNIST-format folder whose train images are images_gz; the rest is tiny and valid."""
    folder.mkdir()

    def idx(a):
        return struct.pack(">I", 0x800 | a.ndim) + b"".join(struct.pack(">I", d)
                                                             for d in a.shape) + a.tobytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(images_gz)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx(np.zeros(60000, np.uint8)))
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx(np.zeros((2, 8, 8), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx(np.zeros(2, np.uint8)))


def gzip_of(header: bytes, zeros: int) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)   # gzip container
    chunk = bytes(8 * MB)
    parts = [z.compress(header)] + [z.compress(chunk) for _ in range(zeros // len(chunk))]
    return b"".join(parts) + z.flush()


def test_idx_gzip_bomb_stops_at_what_the_header_declares(copy):
    # 60000x8x8 = 3.8 MB of images, then 400 MB more zeros: 0.4 MB compressed
    idx_folder(copy / "bomb", gzip_of(struct.pack(">IIII", 0x803, 60000, 8, 8), 400 * MB))
    _, err = cnndsl("train", "small.cnn", "--data", "bomb", "-o", "x.npz", cwd=copy,
                    max_mb=400)
    assert "train-images-idx3-ubyte.gz: more than 1,048,576 unexpected bytes after the " \
           "60000 x 8 x 8 its header describes" in err


def test_idx_header_declaring_too_much_is_refused_unread(copy):
    idx_folder(copy / "huge", gzip_of(struct.pack(">IIII", 0x803, 60000, 4096, 4096), 8 * MB))
    _, err = cnndsl("train", "small.cnn", "--data", "huge", "-o", "x.npz", cwd=copy,
                    max_mb=400)
    assert "train-images-idx3-ubyte.gz: its header declares 60000 x 4096 x 4096" in err
    assert "more than the 2 GB" in err


# ---- 3. .npz members: header and zip sizes checked before reading ------------------------

def npy_bytes(shape, descr="<f4", body=b""):
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def npz_with(path: Path, members: dict[str, bytes]):
    """An .npz of small valid arrays, with members replaced by raw .npy bytes."""
    small_npz(path)
    with zipfile.ZipFile(path) as z:
        kept = {n: z.read(n) for n in z.namelist()}
    kept.update({f"{k}.npy": v for k, v in members.items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, raw in kept.items():
            z.writestr(name, raw)
    return path


def test_npz_header_declaring_a_trillion_elements(copy):
    npz_with(copy / "t.npz", {"x_train": npy_bytes((10**12,), body=bytes(64))})
    _, err = cnndsl("train", "small.cnn", "--data", "t.npz", "-o", "x.npz", cwd=copy)
    assert "t.npz: array 'x_train' declares shape (1000000000000,) of float32" in err


def test_npz_member_inflating_past_its_declared_size(copy):
    path = npz_with(copy / "z.npz", {"x_train": npy_bytes((48, 8, 8, 1), "|u1",
                                                          bytes(48 * 64 + 100 * MB))})
    raw = bytearray(path.read_bytes())
    # shrink the declared size in the central directory to what the .npy header describes
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46: at + 46 + 11] != b"x_train.npy":
        at = raw.index(b"PK\x01\x02", at + 4)
    declared = len(npy_bytes((48, 8, 8, 1), "|u1")) + 48 * 64
    raw[at + 24: at + 28] = struct.pack("<I", declared)
    path.write_bytes(bytes(raw))
    _, err = cnndsl("train", "small.cnn", "--data", "z.npz", "-o", "x.npz", cwd=copy,
                    max_mb=400)
    assert "z.npz: cannot read its array 'x_train'" in err


@pytest.mark.parametrize("dtype, kind", [
    (object, "object"), ([("a", "<i4"), ("b", "<f4")], "structured"),
    (np.complex64, "complex"), ("datetime64[s]", "datetime"), ("timedelta64[s]", "timedelta")])
def test_npz_dtypes_that_are_not_numbers_are_refused(copy, dtype, kind):
    y = np.zeros(48, dtype)
    if dtype is object:
        y = np.array([0] * 47 + ["x"], dtype=object)
    small_npz(copy / "d.npz", y_train=y)
    _, err = cnndsl("train", "small.cnn", "--data", "d.npz", "-o", "x.npz", cwd=copy)
    assert "d.npz: array 'y_train' has dtype" in err and kind in err


# ---- 4. non-regular files and oversized sources ------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_check_of_a_device(tmp_path, device):
    _, err = cnndsl("check", device, cwd=tmp_path, timeout=20, address_space=1 << 30)
    assert f"cannot read '{device}': it is a character device, not a regular file" in err


def test_check_of_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "net.cnn")
    _, err = cnndsl("check", "net.cnn", cwd=tmp_path, timeout=20, address_space=1 << 30)
    assert "cannot read 'net.cnn': it is a FIFO (named pipe), not a regular file" in err


def test_check_of_a_source_over_10_mb(tmp_path):
    (tmp_path / "big.cnn").write_bytes(b"network Big\ninput 4\n" + b"\n" * (11 * MB))
    _, err = cnndsl("check", "big.cnn", cwd=tmp_path, timeout=20, address_space=1 << 30)
    assert "cannot read 'big.cnn': it is larger than 10 MB" in err


def test_fifo_as_dataset_idx_member_and_image(copy):
    os.mkfifo(copy / "pipe.npz")
    _, err = cnndsl("train", "small.cnn", "--data", "pipe.npz", "-o", "x.npz", cwd=copy)
    assert "pipe.npz: cannot read it: it is a FIFO (named pipe), not a regular file" in err
    idx_folder(copy / "idx", b"")
    (copy / "idx" / "train-images-idx3-ubyte.gz").unlink()
    os.mkfifo(copy / "idx" / "train-images-idx3-ubyte")
    _, err = cnndsl("train", "small.cnn", "--data", "idx", "-o", "x.npz", cwd=copy)
    assert "train-images-idx3-ubyte: cannot read it: it is a FIFO" in err
    os.mkfifo(copy / "pipe.png")
    _, err = cnndsl("predict", "small.cnn", "--weights", "w.npz", "pipe.png", cwd=copy)
    assert "pipe.png: cannot read it: it is a FIFO (named pipe), not a regular file" in err


# ---- 5. class names with terminal escapes are shown escaped ------------------------------

def test_class_names_with_escape_codes_are_printed_escaped(copy):
    names = np.array(["\x1b[2J\x1b]0;owned\x07", "b\x9b31m", "c\u202e"])
    small_npz(copy / "data.npz", classes=names)
    out, err = cnndsl("eval", "small.cnn", "--weights", "w.npz", cwd=copy, status=0)
    assert "\\x1b[2J\\x1b]0;owned\\x07" in out and "b\\x9b31m" in out and "c\\u202e" in out
    for text in (out, err):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e")
    cnndsl("train", "small.cnn", "--data", "data.npz", "-o", "e.npz", "--no-progress",
           cwd=copy, status=0)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(copy / "a.png")
    out, err = cnndsl("predict", "small.cnn", "--weights", "e.npz", "a.png", "--top", "3",
                      cwd=copy, status=0)
    assert "\\x1b[2J" in out and not any(c in out + err for c in "\x1b\x07\x9b\u202e")


# ---- 6. symbolic links in an image folder ------------------------------------------------

def test_linked_class_folders_are_read_once_and_never_outside(copy, tmp_path):
    root, outside = copy / "imgs", tmp_path / "elsewhere"
    rng = np.random.default_rng(0)
    for folder in (root / "a", root / "b", outside):
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                folder / f"{i}.png")
    (root / "0_alias").symlink_to(root / "b")    # sorts first, yet b stays the class
    (root / "c").symlink_to(outside)
    (root / "a" / "z.png").symlink_to(outside / "0.png")
    (copy / "two.cnn").write_text(NET.replace("FC(K)", "FC(2)"))
    out, err = cnndsl("train", "two.cnn", "--data", "imgs", "-o", "x.npz", "--no-progress",
                      cwd=copy, status=0)
    assert "0_alias: skipped: a link to" in err and "b, which is already read" in err
    assert f"c: skipped: a link to {outside.resolve()}, outside" in err
    assert "skipped 1 image(s) that are links" in err
    # 12 images of a and b; a sixth held out for test (2), a tenth of the rest for validation
    assert "9 images, 1 held out" in out and "on 2 images" in out


# ---- 7. decompression bombs --------------------------------------------------------------

def png_declaring(path: Path, width: int, height: int):
    """A small PNG whose header says width x height (its pixels are never decoded)."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("side", [10_000, 20_000])   # Pillow: a warning, then an error
def test_decompression_bomb_image_for_predict(copy, side):
    png_declaring(copy / "bomb.png", side, side)
    _, err = cnndsl("predict", "small.cnn", "--weights", "w.npz", "bomb.png", cwd=copy)
    assert "bomb.png: refused: it declares more pixels than an image cnndsl reads" in err
    assert "DecompressionBomb" not in err


def test_oversized_image_in_a_dataset_folder(copy):
    for c in ("a", "b"):
        for i in range(6):
            (copy / "imgs" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(copy / "imgs" / c / f"{i}.png")
    png_declaring(copy / "imgs" / "a" / "big.png", 5000, 5000)
    _, err = cnndsl("train", "small.cnn", "--data", "imgs", "-o", "x.npz", cwd=copy)
    assert "big.png: refused: it is 5000x5000 = 25,000,000 pixels, more than the " \
           "16,777,216 of a dataset image" in err
