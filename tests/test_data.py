"""The data layer: IDX folders, .npz files, image folders, named datasets, checks against a
network, validation splits and images for `predict`. Every fixture is written to tmp_path."""

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnndsl import data
from cnndsl.data import (
    FASHION_CLASSES,
    DataError,
    Dataset,
    check_against,
    load_dataset,
    load_images,
    split_validation,
)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------- helpers

def idx_bytes(a: np.ndarray, magic: int | None = None) -> bytes:
    head = (magic if magic is not None else 0x800 | a.ndim).to_bytes(4, "big")
    head += b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def make_idx_folder(folder: Path, gz=True, dot=False, n=(12, 6), hw=(5, 4), k=10, seed=0):
    """The four MNIST-format files; returns {'train-images': array, ...}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in zip(("train", "t10k"), n):
        for kind, shape in (("images", (count, *hw)), ("labels", (count,))):
            a = rng.integers(0, 256 if kind == "images" else k, shape, dtype=np.uint8)
            d = 3 if kind == "images" else 1
            name = f"{split}-{kind}.idx{d}-ubyte" if dot else f"{split}-{kind}-idx{d}-ubyte"
            write_idx(folder / (name + (".gz" if gz else "")), a, gz)
            arrays[f"{split}-{kind}"] = a
    return arrays


def save_png(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=6, hw=(6, 5), rgb=False,
                      seed=0) -> dict[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        for i in range(per_class):
            shape = (*hw, 3) if rgb else hw
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            written[save_png(root / c / f"{i:03d}.png", a)] = a
    return written


def small_dataset(shape=(28, 28, 1), k=10, name="Fashion-MNIST") -> Dataset:
    x = np.zeros((4, *shape), np.float32)
    y = np.arange(4, dtype=np.int64) % k
    return Dataset(x, y, x, y, [str(i) for i in range(k)], "/data/x", name)


def error_of(spec) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    return info.value


# ---------------------------------------------------------------------------- IDX folders

@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dot", [False, True], ids=["dash", "dot"])
def test_idx_round_trip(tmp_path, gz, dot):
    arrays = make_idx_folder(tmp_path / "digits", gz=gz, dot=dot)
    d = load_dataset(str(tmp_path / "digits"))
    assert d.x_train.shape == (12, 5, 4, 1) and d.x_test.shape == (6, 5, 4, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    np.testing.assert_array_equal(d.x_train[..., 0] * 255, arrays["train-images"])
    np.testing.assert_array_equal(d.x_test[..., 0] * 255, arrays["t10k-images"])
    np.testing.assert_array_equal(d.y_train, arrays["train-labels"])
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels"])
    top = max(arrays["train-labels"].max(), arrays["t10k-labels"].max())
    assert d.classes == [str(i) for i in range(top + 1)]
    assert d.source == str(tmp_path / "digits") and d.shape == (5, 4, 1)


def test_idx_folder_named_after_a_known_dataset_gets_its_class_names(tmp_path):
    make_idx_folder(tmp_path / "fashion-mnist", k=3)
    d = load_dataset(str(tmp_path / "fashion-mnist"))
    assert d.classes == FASHION_CLASSES and d.name == "Fashion-MNIST"


def corrupt_idx(folder: Path, case: str) -> str:
    """Break one file of a gzipped IDX folder; return the name the error must mention."""
    tri, trl = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    images = np.zeros((12, 5, 4), np.uint8)
    if case == "wrong magic":
        write_idx(tri, np.zeros(12, np.uint8), gz=True)          # a label file named as images
    elif case == "magic of another type":
        tri.write_bytes(gzip.compress(idx_bytes(images, magic=0x0D03)))
    elif case == "truncated data":
        tri.write_bytes(gzip.compress(idx_bytes(images)[:-7]))
    elif case == "truncated header":
        tri.write_bytes(gzip.compress(idx_bytes(images)[:10]))
    elif case == "too short":
        tri.write_bytes(b"\0\0")
    elif case == "extra bytes":
        tri.write_bytes(gzip.compress(idx_bytes(images) + b"\0" * 3))
    elif case == "no images":
        tri.write_bytes(gzip.compress(idx_bytes(np.zeros((0, 5, 4), np.uint8))))
    elif case == "corrupt gzip":
        raw = bytearray(gzip.compress(np.random.default_rng(1).bytes(2000)))
        raw[30:60] = b"\xff" * 30
        tri.write_bytes(bytes(raw))
    elif case == "truncated gzip":
        tri.write_bytes(tri.read_bytes()[:-20])
    elif case == "gzip crc":
        raw = bytearray(tri.read_bytes())
        raw[-8] ^= 0xFF                                          # the stored CRC-32
        tri.write_bytes(bytes(raw))
    elif case == "count mismatch":
        write_idx(trl, np.zeros(11, np.uint8), gz=True)
    elif case == "labels out of range":
        write_idx(trl, np.full(12, 10, np.uint8), gz=True)
    elif case == "missing file":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
        return "t10k-labels-idx1-ubyte"
    elif case == "test size differs":
        write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((6, 4, 4), np.uint8), gz=True)
        return "t10k-images-idx3-ubyte.gz"
    else:
        raise AssertionError(case)
    return trl.name if case in ("count mismatch", "labels out of range") else tri.name


IDX_CASES = ["wrong magic", "magic of another type", "truncated data", "truncated header",
             "too short", "extra bytes", "no images", "corrupt gzip", "truncated gzip",
             "gzip crc", "count mismatch", "labels out of range", "missing file",
             "test size differs"]


@pytest.mark.parametrize("case", IDX_CASES)
def test_idx_corruption_is_a_data_error_naming_the_file(tmp_path, case):
    folder = tmp_path / "mnist"          # a known name, so labels must be 0..9
    make_idx_folder(folder)
    name = corrupt_idx(folder, case)
    err = error_of(str(folder))
    assert name in err.message and err.hint


def test_idx_error_messages_say_what_is_wrong(tmp_path):
    make_idx_folder(tmp_path / "mnist")
    corrupt_idx(tmp_path / "mnist", "wrong magic")
    assert "magic number 0x00000801 (that of a label file), expected 0x00000803" in \
        error_of(str(tmp_path / "mnist")).message
    make_idx_folder(tmp_path / "b")
    corrupt_idx(tmp_path / "b", "truncated data")
    assert "truncated: its header says 12 x 5 x 4 (240 bytes of data) but it holds 233" in \
        error_of(str(tmp_path / "b")).message
    make_idx_folder(tmp_path / "c")
    corrupt_idx(tmp_path / "c", "count mismatch")
    assert "holds 12 images but" in error_of(str(tmp_path / "c")).message
    make_idx_folder(tmp_path / "mnist2")
    corrupt_idx(tmp_path / "mnist2", "truncated gzip")
    assert "truncated" in error_of(str(tmp_path / "mnist2")).message


def test_labels_out_of_range_only_for_a_known_dataset(tmp_path):
    make_idx_folder(tmp_path / "letters", k=27)       # EMNIST-letters-like labels
    assert len(load_dataset(str(tmp_path / "letters")).classes) <= 27
    make_idx_folder(tmp_path / "mnist", k=27)
    assert "out of range: MNIST has 10 classes" in error_of(str(tmp_path / "mnist")).message


def test_random_corruption_never_leaks_another_exception(tmp_path):
    make_idx_folder(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(60):
        raw = bytearray(good)
        if rng.random() < 0.3:
            raw = raw[: rng.integers(0, len(raw))]
        else:
            for i in rng.integers(0, len(raw), rng.integers(1, 4)):
                raw[i] = rng.integers(0, 256)
        path.write_bytes(bytes(raw))
        try:
            load_dataset(str(tmp_path / "mnist"))
        except DataError as e:
            assert path.name in e.message


# ---------------------------------------------------------------------------- npz

def write_npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    default = {"x_train": rng.integers(0, 256, (8, 5, 4), dtype=np.uint8),
               "y_train": np.arange(8) % 3,
               "x_test": rng.integers(0, 256, (4, 5, 4), dtype=np.uint8),
               "y_test": np.arange(4) % 3}
    default.update(arrays)
    np.savez(path, **{k: v for k, v in default.items() if v is not None})
    return path


def test_npz_uint8_3d(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (8, 5, 4), dtype=np.uint8)
    d = load_dataset(write_npz(tmp_path / "set.npz", x_train=x))
    # kept as saved: (N, 5, 4) is 5x4 grayscale images or a 1-D signal of 4 channels,
    # which only the network's input can tell
    assert d.x_train.shape == (8, 5, 4) and d.x_train.dtype == np.float32
    assert check_against(d, (5, 4, 1), (3,)) == []
    assert d.x_train.shape == (8, 5, 4, 1) and d.x_test.shape[1:] == (5, 4, 1)
    np.testing.assert_array_equal(d.x_train[..., 0] * 255, x)
    as_signal = load_dataset(tmp_path / "set.npz")
    assert check_against(as_signal, (5, 4), (3,)) == [] and as_signal.shape == (5, 4)
    assert d.classes == ["class 0", "class 1", "class 2"] and d.name == "set.npz"
    assert d.y_train.dtype == np.int64 and d.notes == []


def test_npz_float_4d_with_classes_and_column_labels(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((8, 6, 6, 3), dtype=np.float32)
    path = write_npz(tmp_path / "rgb.npz", x_train=x, x_test=x[:4].astype(np.float64),
                     y_train=(np.arange(8) % 2).reshape(8, 1).astype(np.float32),
                     classes=np.array(["no", "yes", "maybe"]))
    d = load_dataset(str(path))
    assert d.shape == (6, 6, 3) and d.x_test.dtype == np.float32
    np.testing.assert_array_equal(d.x_train, x)
    assert d.classes == ["no", "yes", "maybe"]
    np.testing.assert_array_equal(d.y_train, np.arange(8) % 2)


def test_npz_flat_vectors_stay_flat(tmp_path):
    rng = np.random.default_rng(4)
    d = load_dataset(write_npz(tmp_path / "flat.npz", x_train=rng.random((8, 20)),
                               x_test=rng.random((4, 20))))
    assert d.shape == (20,)


def test_npz_floats_outside_unit_range_are_a_note(tmp_path):
    x = np.full((8, 5, 4), 200.0)
    d = load_dataset(write_npz(tmp_path / "raw.npz", x_train=x, x_test=x[:4]))
    assert d.x_train.max() == 200.0
    assert any("not [0, 1]" in n for n in d.notes)
    assert any("not [0, 1]" in w for w in check_against(d, (5, 4, 1), (3,)))


def break_npz(path: Path, case: str):
    rng = np.random.default_rng(0)
    if case == "truncated":
        write_npz(path)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "not a zip":
        path.write_text("x_train,y_train\n1,2\n")
    elif case == "single array":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif case == "missing key":
        write_npz(path, y_test=None)
    elif case == "count mismatch":
        write_npz(path, y_train=np.zeros(7, int))
    elif case == "train/test shapes differ":
        write_npz(path, x_test=np.zeros((4, 5, 5), np.uint8))
    elif case == "1-D images":
        write_npz(path, x_train=np.zeros(8, np.uint8))
    elif case == "channels first":
        write_npz(path, x_train=np.zeros((8, 3, 32, 32), np.uint8))
    elif case == "ints out of range":
        write_npz(path, x_train=np.full((8, 5, 4), 1000, np.int32))
    elif case == "nan":
        write_npz(path, x_train=np.full((8, 5, 4), np.nan))
    elif case == "string images":
        write_npz(path, x_train=np.full((8, 5, 4), "a"))
    elif case == "negative label":
        write_npz(path, y_train=np.array([0, 1, -1, 0, 1, 0, 1, 0]))
    elif case == "fractional label":
        write_npz(path, y_train=np.full(8, 0.5))
    elif case == "one-hot labels":
        write_npz(path, y_train=np.eye(3)[np.arange(8) % 3])
    elif case == "label beyond classes":
        write_npz(path, classes=np.array(["a", "b"]))
    elif case == "classes not strings":
        write_npz(path, classes=np.arange(3))
    elif case == "no examples":
        write_npz(path, x_train=np.zeros((0, 5, 4), np.uint8), y_train=np.zeros(0, int))
    elif case == "pickled labels":
        np.savez(path, x_train=np.zeros((2, 3, 3)), y_train=np.array([1, "a"], dtype=object),
                 x_test=np.zeros((2, 3, 3)), y_test=np.zeros(2, int))
    elif case == "corrupt member":
        write_npz(path, x_train=rng.integers(0, 256, (50, 5, 4), dtype=np.uint8))
        raw = bytearray(path.read_bytes())
        raw[400:420] = bytes(20)                         # inside x_train's data: CRC fails
        path.write_bytes(bytes(raw))
    else:
        raise AssertionError(case)


NPZ_CASES = ["truncated", "not a zip", "single array", "missing key", "count mismatch",
             "train/test shapes differ", "1-D images", "channels first", "ints out of range",
             "nan", "string images", "negative label", "fractional label", "one-hot labels",
             "label beyond classes", "classes not strings", "no examples", "pickled labels",
             "corrupt member"]


@pytest.mark.parametrize("case", NPZ_CASES)
def test_npz_corruption_is_a_data_error_naming_the_file(tmp_path, case):
    path = tmp_path / "broken.npz"
    break_npz(path, case)
    err = error_of(str(path))
    assert "broken.npz" in err.message and err.path == str(path)


def test_npz_error_messages_say_what_is_wrong(tmp_path):
    cases = {"missing key": "missing the array(s) y_test",
             "channels first": "looks channels-first",
             "count mismatch": "x_train holds 8 examples but y_train holds 7 labels",
             "label beyond classes": "out of range: its 'classes' array has 2 classes",
             "one-hot labels": "expected one class index per example",
             "corrupt member": "cannot read its array 'x_train'"}
    for i, (case, text) in enumerate(cases.items()):
        path = tmp_path / f"{i}.npz"
        break_npz(path, case)
        assert text in error_of(path).message, case
    assert "np.argmax" in error_of(tmp_path / "4.npz").hint


def test_random_npz_corruption_never_leaks_another_exception(tmp_path):
    path = write_npz(tmp_path / "f.npz")
    good = path.read_bytes()
    rng = np.random.default_rng(1)
    for _ in range(60):
        raw = bytearray(good)
        if rng.random() < 0.3:
            raw = raw[: rng.integers(0, len(raw))]
        else:
            for i in rng.integers(0, len(raw), rng.integers(1, 4)):
                raw[i] = rng.integers(0, 256)
        path.write_bytes(bytes(raw))
        try:
            load_dataset(path)
        except DataError as e:
            assert "f.npz" in e.message


# ---------------------------------------------------------------------------- image folders

def test_image_folder_with_train_and_test(tmp_path):
    train = make_image_folder(tmp_path / "pets" / "train", classes=("dog", "cat"), seed=1)
    test = make_image_folder(tmp_path / "pets" / "test", classes=("cat",), per_class=2, seed=2)
    d = load_dataset(str(tmp_path / "pets"))
    assert d.classes == ["cat", "dog"]                  # sorted folder names
    assert d.x_train.shape == (12, 6, 5, 1) and d.x_test.shape == (2, 6, 5, 1)
    assert d.y_train.tolist() == [0] * 6 + [1] * 6 and d.y_test.tolist() == [0, 0]
    first_cat = train[tmp_path / "pets" / "train" / "cat" / "000.png"]
    np.testing.assert_array_equal(d.x_train[0, ..., 0] * 255, first_cat)
    np.testing.assert_allclose(d.x_test[1, ..., 0] * 255,
                               test[tmp_path / "pets" / "test" / "cat" / "001.png"], atol=1e-4)
    assert d.notes == [] and d.name == "pets"


def test_image_folder_without_test_holds_out_a_seeded_sixth(tmp_path):
    make_image_folder(tmp_path / "p", classes=("a", "b", "c"), per_class=12, rgb=True)
    d = load_dataset(tmp_path / "p")
    assert d.shape == (6, 5, 3) and d.classes == ["a", "b", "c"]
    assert len(d.y_test) == 6 and np.bincount(d.y_test).tolist() == [2, 2, 2]
    assert len(d.y_train) == 30
    again = load_dataset(tmp_path / "p")
    np.testing.assert_array_equal(d.x_test, again.x_test)
    # the held-out images are not in training
    train_rows = {r.tobytes() for r in d.x_train}
    assert not any(r.tobytes() in train_rows for r in d.x_test)
    assert any("held out" in n for n in d.notes)


def test_image_folder_grayscale_and_colour_mix_reads_as_rgb(tmp_path):
    save_png(tmp_path / "m" / "train" / "a" / "0.png", np.full((4, 4), 100, np.uint8))
    save_png(tmp_path / "m" / "train" / "b" / "0.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "m" / "test" / "a" / "0.png", np.full((4, 4), 100, np.uint8))
    d = load_dataset(tmp_path / "m")
    assert d.shape == (4, 4, 3)
    np.testing.assert_allclose(d.x_train[0], 100 / 255, rtol=1e-6)


def test_image_folder_ignores_other_files_and_hidden_folders(tmp_path):
    make_image_folder(tmp_path / "f", per_class=6)
    (tmp_path / "f" / "cat" / "notes.txt").write_text("hi")
    (tmp_path / "f" / ".ipynb_checkpoints").mkdir()
    save_png(tmp_path / "f" / "dog" / ".hidden" / "x.png", np.zeros((9, 9), np.uint8))
    d = load_dataset(tmp_path / "f")
    assert d.classes == ["cat", "dog"] and len(d.y_train) + len(d.y_test) == 12
    assert any("ignored 1 file(s) that are not images (.txt)" in n for n in d.notes)


def break_folder(root: Path, case: str) -> str:
    make_image_folder(root / "train")
    make_image_folder(root / "test", per_class=1)
    if case == "odd size":
        save_png(root / "train" / "dog" / "big.png", np.zeros((9, 9), np.uint8))
        return "big.png"
    if case == "corrupt image":
        (root / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return "bad.png"
    if case == "truncated image":
        good = (root / "train" / "cat" / "000.png").read_bytes()
        (root / "train" / "cat" / "000.png").write_bytes(good[:-30])
        return "000.png"
    if case == "empty class":
        (root / "train" / "bird").mkdir()
        return "bird"
    if case == "test class not in train":
        save_png(root / "test" / "fish" / "0.png", np.zeros((6, 5), np.uint8))
        return "fish"
    if case == "no class folders":
        for p in sorted(root.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        save_png(root / "loose.png", np.zeros((6, 5), np.uint8))
        return root.name
    if case == "too few to hold out":
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "test").rmdir()
        for p in sorted((root / "train").rglob("*.png"))[1:]:
            if p.name != "000.png":
                p.unlink()
        return root.name
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["odd size", "corrupt image", "truncated image", "empty class",
                                  "test class not in train", "no class folders",
                                  "too few to hold out"])
def test_image_folder_problems_are_data_errors_naming_the_file(tmp_path, case):
    root = tmp_path / "imgs"
    name = break_folder(root, case)
    err = error_of(root)
    assert name in err.message and err.hint


# ---------------------------------------------------------------------------- named datasets

@pytest.fixture
def places(tmp_path, monkeypatch):
    """CNNDSL_DATA, HOME and the system folder, all under tmp_path."""
    env, home, system = tmp_path / "env", tmp_path / "home", tmp_path / "system"
    monkeypatch.setenv("CNNDSL_DATA", str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(data, "SYSTEM_DATA", system)
    return env, home / ".cache" / "cnndsl", system


def test_named_dataset_search_order(places):
    env, cache, system = places
    for i, place in enumerate((env, cache, system)):
        make_idx_folder(place / "fashion-mnist", n=(3 + i, 2))
    assert len(load_dataset("fashion-mnist").y_train) == 3
    (env / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()   # incomplete: skipped
    d = load_dataset("Fashion_MNIST")
    assert len(d.y_train) == 4 and d.source == str(cache / "fashion-mnist")
    assert d.classes == FASHION_CLASSES and d.name == "Fashion-MNIST"
    for f in (cache / "fashion-mnist").iterdir():
        f.unlink()
    assert len(load_dataset("fashion-mnist").y_train) == 5


def test_named_dataset_without_cnndsl_data(places, monkeypatch):
    _, _, system = places
    monkeypatch.delenv("CNNDSL_DATA")
    make_idx_folder(system / "mnist")
    d = load_dataset("mnist")
    assert d.classes == [str(i) for i in range(10)] and d.name == "MNIST"


def test_named_dataset_not_found_lists_the_places(places):
    env, cache, system = places
    (cache / "fashion-mnist").mkdir(parents=True)
    err = error_of("fashion-mnist")
    for place in (env, cache, system):
        assert str(place / "fashion-mnist") in err.message
    assert f"{cache / 'fashion-mnist'} (incomplete)" in err.message
    assert "apt-get install dataset-fashion-mnist" in err.hint
    assert "train-images-idx3-ubyte" in error_of("mnist").hint


def test_a_name_is_a_name_and_a_path_is_a_path(places, tmp_path, monkeypatch):
    make_idx_folder(places[2] / "mnist", n=(3, 2))
    make_idx_folder(tmp_path / "cwd" / "mnist", n=(7, 2))
    monkeypatch.chdir(tmp_path / "cwd")
    assert len(load_dataset("mnist").y_train) == 3
    assert len(load_dataset("./mnist").y_train) == 7


def test_unknown_names_and_paths(tmp_path):
    err = error_of("fashon-mnist")
    assert "fashon-mnist" in err.message and "did you mean 'fashion-mnist'" in err.hint
    assert "no such file or folder" in error_of(str(tmp_path / "nope.npz")).message


# ---------------------------------------------------------------------------- check_against

def test_check_against_accepts_the_exact_shape():
    assert check_against(small_dataset(), (28, 28, 1), (10,)) == []


@pytest.mark.parametrize("input_shape, message, hint", [
    ((32, 32, 1), "Fashion-MNIST images are 28x28x1 but the network's input is 32x32x1",
     "change `input` to 28x28x1"),
    ((28, 28, 3), "Fashion-MNIST images have 1 channel (28x28x1) but the network's input has 3",
     "change `input` to 28x28x1"),
    ((1, 28, 28), "Fashion-MNIST images are 28x28x1 but the network's input is 1x28x28",
     "the last number of `input` is the channel count"),
    ((784,), "but the network's input is 784", "FC flattens a spatial input by itself"),
])
def test_check_against_input_mismatch(input_shape, message, hint):
    with pytest.raises(DataError) as info:
        check_against(small_dataset(), input_shape, (10,))
    assert message in info.value.message and hint in info.value.hint


def test_check_against_flat_data_for_a_spatial_input():
    with pytest.raises(DataError) as info:
        check_against(small_dataset(shape=(784,), name="flat.npz"), (28, 28, 1), (10,))
    assert "flat.npz examples are 784" in info.value.message
    assert "flat vectors" in info.value.hint


def test_check_against_outputs():
    d = small_dataset()
    with pytest.raises(DataError, match="has 5 outputs but Fashion-MNIST has 10 classes") as info:
        check_against(d, (28, 28, 1), (5,))
    assert "FC(10)" in info.value.hint
    with pytest.raises(DataError, match="output is 7x7x10") as info:
        check_against(d, (28, 28, 1), (7, 7, 10))
    assert "FC(10)" in info.value.hint
    warnings = check_against(d, (28, 28, 1), (128,))
    assert len(warnings) == 1
    assert warnings[0].startswith("the network has 128 outputs but the data has 10 classes")


# ---------------------------------------------------------------------------- split_validation

def test_split_validation_is_deterministic_and_disjoint():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100)
    xt, yt, xv, yv = split_validation(x, y, 0.1, seed=7)
    assert len(yv) == 10 and len(yt) == 90
    assert set(yt.tolist()).isdisjoint(yv.tolist()) and set(yt) | set(yv) == set(y)
    np.testing.assert_array_equal(xt[:, 0], yt)                 # rows stay paired
    np.testing.assert_array_equal(xv[:, 0], yv)
    assert (np.diff(yt) > 0).all() and (np.diff(yv) > 0).all()  # original order kept
    again = split_validation(x, y, 0.1, seed=7)
    np.testing.assert_array_equal(again[3], yv)
    assert not np.array_equal(split_validation(x, y, 0.1, seed=8)[3], yv)


def test_split_validation_edges():
    x, y = np.zeros((5, 2)), np.arange(5)
    assert len(split_validation(x, y, 0.0, 0)[3]) == 0
    assert len(split_validation(x, y, 0.01, 0)[3]) == 1          # at least one when asked
    assert len(split_validation(x, y, 0.99, 0)[1]) == 1          # never all of them
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            split_validation(x, y, bad, 0)


# ---------------------------------------------------------------------------- load_images

def test_load_images_exact_size_needs_no_notes(tmp_path):
    a = np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8)
    x, notes = load_images([save_png(tmp_path / "a.png", a)], (28, 28, 1))
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32 and notes == []
    np.testing.assert_array_equal(x[0, ..., 0] * 255, a)


def test_load_images_resizes_and_converts(tmp_path):
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    gray = np.full((10, 10), 128, np.uint8)
    paths = [save_png(tmp_path / "red.png", red), save_png(tmp_path / "g.jpg", gray)]
    x, notes = load_images(paths, (28, 28, 1))
    assert x.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(x[0], 76 / 255, atol=1e-6)      # ITU-R 601 luma of pure red
    assert abs(x[1].mean() - 128 / 255) < 0.02
    assert f"{paths[0]}: resized from 40x60 to 28x28" in notes
    assert f"{paths[0]}: converted colour to grayscale" in notes
    x, notes = load_images([paths[1]], (10, 10, 3))
    assert x.shape == (1, 10, 10, 3) and notes == [f"{paths[1]}: converted grayscale to RGB"]
    np.testing.assert_allclose(x[0, ..., 0], x[0, ..., 2])


def test_load_images_reads_16_bit_and_alpha(tmp_path):
    deep = np.full((4, 4), 65535 // 2, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x, _ = load_images([tmp_path / "deep.png", tmp_path / "a.png"], (4, 4, 3))
    np.testing.assert_allclose(x[0], 0.5, atol=1e-4)
    np.testing.assert_allclose(x[1, ..., 1], 1.0)


@pytest.mark.parametrize("case", ["missing", "folder", "not an image", "truncated"])
def test_load_images_errors_name_the_file(tmp_path, case):
    path = tmp_path / "img.png"
    if case == "folder":
        path.mkdir()
    elif case == "not an image":
        path.write_text("hello")
    elif case == "truncated":
        save_png(path, np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        load_images([path], (28, 28, 1))
    assert str(path) in info.value.message


def test_load_images_needs_a_2d_input(tmp_path):
    with pytest.raises(DataError, match="input is 784"):
        load_images([], (784,))
    with pytest.raises(DataError, match="input is 28x28x2"):
        load_images([], (28, 28, 2))


# ---------------------------------------------------------------------------- the real data

@pytest.mark.skipif(not (REAL_FASHION / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    t0 = time.perf_counter()
    d = load_dataset(str(REAL_FASHION))
    seconds = time.perf_counter() - t0
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert np.bincount(d.y_train).tolist() == [6000] * 10
    assert d.classes == FASHION_CLASSES
    assert d.classes[d.y_train[0]] == "Ankle boot"       # the first training image
    assert seconds < 5, f"loading Fashion-MNIST took {seconds:.2f} s"
