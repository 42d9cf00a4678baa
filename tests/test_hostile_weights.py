"""Hostile and damaged weights files, failed saves and signals (issue 11, weights part):
always a CheckpointError (CLI exit 1, never 3, never a traceback), in bounded memory and
time, and the previous weights file byte-identical after every failed save."""

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from measure import run_measured

import cnndsl
from cnndsl import checkpoint
from cnndsl.checkpoint import CheckpointError
from cnndsl.model import Model
from cnndsl.optim import SGD, Adam, StateError
from cnndsl.train import Trainer
from cnndsl.trainconfig import TrainConfig

TINY = """network Tiny
input 8x8x1
train { optimizer = sgd, lr = 0.1, momentum = 0.9, batch = 16, epochs = 1, val = 0.2 }
Conv(4, 3) -> BatchNorm -> ReLU -> MaxPool(2) -> Dropout(0.2) -> FC(3) -> Softmax
"""
MAX_RSS_MB = 700  # "well under 1 GB": the CLI with numba loaded is ~250 MB


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, n)


def make_trainer(out, epochs=1):
    model = Model(cnndsl.check_text(TINY), seed=0)
    (x, y), (xt, yt) = synthetic(240, 0), synthetic(60, 1)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch=16, epochs=epochs,
                         val=0.2)
    return Trainer(model, config, (x[:192], y[:192], x[192:], y[192:], xt, yt), str(out),
                   {"architecture": TINY}, progress_bar=False, log=lambda line: None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """tiny.cnn, data.npz and w.npz: the CLI trained one epoch of them."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "tiny.cnn").write_text(TINY)
    (x, y), (xt, yt) = synthetic(240, 0), synthetic(60, 1)
    np.savez(folder / "data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    status, _, err, _ = cli("train", "tiny.cnn", "--data", "data.npz", "-o", "w.npz",
                            "--no-progress", cwd=folder)
    assert status == 0, err
    return folder


def cli(*args, cwd, timeout=120, wrap=(), python=()):
    """Run `cnndsl ARGS` (or `python PYTHON`) in a subprocess: (exit status, stdout, stderr,
    its own peak RSS in MB, tests/measure.py)."""
    command = [*wrap, sys.executable, *(python or ["-m", "cnndsl.cli", *map(str, args)])]
    status, out, err, peak, _ = run_measured(command, cwd, timeout)
    assert "Traceback" not in err and "internal error" not in err, err
    return status, out, err, peak


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- crafting files ----------------------------------------------------------------------

def npy(header: dict | str, data: bytes = b"") -> bytes:
    """A .npy file with this header (a dict, or the header text as given) and data."""
    text = header if isinstance(header, str) else repr(header)
    text = text + " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1") + data


def entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(path, members: dict, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return Path(path)


def with_entry(source, target, name: str, data: bytes | None) -> Path:
    """A copy of the weights file `source` with one entry replaced (None: removed)."""
    members = entries(source)
    if data is None:
        members.pop(name)
    else:
        members[name] = data
    return write_zip(target, members)


def meta_bytes(document) -> bytes:
    payload = json.dumps(document).encode() if not isinstance(document, bytes) else document
    return npy({"descr": "|u1", "fortran_order": False, "shape": (len(payload),)}, payload)


def with_meta(source, target, edit) -> Path:
    """A copy of `source` whose metadata is `edit(meta)` (edited in place, or returned)."""
    meta = json.loads(np.load(source)["meta"].tobytes())
    edited = edit(meta)
    return with_entry(source, target, "meta.npy", meta_bytes(meta if edited is None
                                                             else edited))


def set_method(path, method: int) -> None:
    """Patch every entry's compression method in the local and central headers."""
    data = bytearray(Path(path).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = data.find(signature)
        while start >= 0:
            data[start + offset:start + offset + 2] = struct.pack("<H", method)
            start = data.find(signature, start + 4)
    Path(path).write_bytes(bytes(data))


def zip_bomb(path, megabytes: int) -> Path:
    """One deflated entry: a float32 header and `megabytes` MB of zeros (~1000:1)."""
    meta = np.frombuffer(json.dumps({"format": checkpoint.FORMAT}).encode(), np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.npy", npy({"descr": "|u1", "fortran_order": False,
                                          "shape": (len(meta),)}, meta.tobytes()))
        count = megabytes * 2**20 // 4
        with archive.open("param/conv1.weight.npy", "w", force_zip64=True) as handle:
            handle.write(npy({"descr": "<f4", "fortran_order": False, "shape": (count,)}))
            zeros = bytes(2**20)
            for _ in range(megabytes):
                handle.write(zeros)
    return Path(path)


# ---- 1. loading: every entry's header checked before it is read --------------------------

WEIGHT = "param/conv1.weight.npy"


def damaged(kind: str, good: Path, tmp_path: Path) -> Path:
    target = tmp_path / f"{kind}.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (4, 1, 3, 3)}
    if kind == "corrupt_deflate":
        write_zip(target, entries(good), zipfile.ZIP_DEFLATED)
        data = bytearray(target.read_bytes())
        at = data.find(b"PK\x03\x04", data.find(WEIGHT.encode()) + 100)  # inside the data
        for i in range(max(40, at - 200), at - 20):
            data[i] ^= 0x5A
        target.write_bytes(bytes(data))
    elif kind == "deflate64":
        write_zip(target, entries(good), zipfile.ZIP_DEFLATED)
        set_method(target, 9)
    elif kind == "bzip2":
        write_zip(target, entries(good), zipfile.ZIP_BZIP2)
    elif kind == "10^12_elements":
        with_entry(good, target, WEIGHT, npy({**header, "shape": (10**12,)}, bytes(144)))
    elif kind == "negative_shape":
        with_entry(good, target, WEIGHT, npy({**header, "shape": (-1, 36)}, bytes(144)))
    elif kind == "truncated_entry":
        with_entry(good, target, WEIGHT, npy(header, bytes(100)))
    elif kind == "huge_header":
        with_entry(good, target, WEIGHT, npy("{" + " " * 60000 + "}"))
    elif kind == "header_garbage":
        with_entry(good, target, WEIGHT, npy("__import__('os').system('true')", bytes(144)))
    elif kind in DTYPES:
        descr = DTYPES[kind]
        size = np.dtype(descr).itemsize * 36 if descr != "|O" else 36
        with_entry(good, target, WEIGHT, npy({**header, "descr": descr}, bytes(size)))
    elif kind == "unknown_entry":
        members = {**entries(good), "evil.npy": npy({**header, "shape": (1,)}, bytes(4))}
        write_zip(target, members)
    elif kind == "no_npy_magic":
        with_entry(good, target, WEIGHT, b"just some bytes" * 10)
    elif kind == "meta_float":
        with_entry(good, target, "meta.npy", npy({**header, "shape": (2,)}, bytes(8)))
    elif kind == "meta_not_json":
        with_entry(good, target, "meta.npy", meta_bytes(b"\xff\xfe{not json"))
    elif kind == "meta_deep":
        with_entry(good, target, "meta.npy", meta_bytes(b"[" * 200_000 + b"]" * 200_000))
    elif kind == "meta_huge_int":
        with_entry(good, target, "meta.npy", meta_bytes(b'{"epoch": ' + b"9" * 10_000 + b"}"))
    else:
        edit = META_EDITS[kind]
        with_meta(good, target, edit)
    return target


DTYPES = {"string": "<U4", "bytes": "|S4", "structured": [("a", "<f4")], "object": "|O",
          "complex": "<c8", "datetime": "<M8[s]", "float16": "<f2", "bool": "|b1",
          "int_weights": "<i4"}
META_EDITS = {
    "meta_list": lambda m: [1, 2, 3],
    "meta_string": lambda m: "cnndsl-weights-1",
    "meta_no_format": lambda m: {k: v for k, v in m.items() if k != "format"},
    "meta_classes_not_list": lambda m: {**m, "classes": "abc"},
    "meta_architecture_number": lambda m: {**m, "architecture": 7},
    "meta_bindings_strings": lambda m: {**m, "bindings": {"k": "three"}},
    "meta_input_shape": lambda m: {**m, "input_shape": [8, "x", 1]},
    "meta_run_data_limit": lambda m: {**m, "run_data": {**m["run_data"], "limit": "ten"}},
    "meta_config_batch": lambda m: {**m, "config": {**m["config"], "batch": "sixty"}},
    "meta_config_lr_nan": lambda m: {**m, "config": {**m["config"], "lr": float("nan")}},
    "meta_config_optimizer": lambda m: {**m, "config": {**m["config"], "optimizer": "foo"}},
    "progress_epoch_one": lambda m: m["progress"].update(epoch="one"),
    "progress_step_negative": lambda m: m["progress"].update(step=-5),
    "progress_step_float": lambda m: m["progress"].update(step=1.5),
    "progress_history_dict": lambda m: m["progress"].update(history={"a": 1}),
    "progress_loss_nan": lambda m: m["progress"].update(loss_sum=float("nan")),
    "progress_list": lambda m: {**m, "progress": [1]},
    "progress_epoch_bool": lambda m: m["progress"].update(epoch=True),
    "graph_layers_dict": lambda m: m["graph"].update(layers={"a": 1}),
    "graph_layer_params_int": lambda m: m["graph"]["layers"][1].update(params={"weight": 4}),
    "graph_layer_no_op": lambda m: {**m, "graph": {**m["graph"], "layers": [
        {k: v for k, v in layer.items() if k != "op"} for layer in m["graph"]["layers"]]}},
}
EXPECTED = {
    "corrupt_deflate": "not a readable weights file", "deflate64": "deflate64",
    "bzip2": "bzip2", "10^12_elements": "declares 1000000000000 float32",
    "negative_shape": "shape", "truncated_entry": "holds 100 bytes",
    "huge_header": "not a readable", "header_garbage": "not a readable",
    "unknown_entry": "evil.npy", "no_npy_magic": "not a readable",
    "meta_float": "meta", "meta_not_json": "metadata is corrupted",
    "meta_deep": "metadata is corrupted", "meta_huge_int": "metadata is corrupted",
    **{kind: "holds" for kind in DTYPES},
    "meta_list": "metadata is a JSON list, not an object",
    "meta_string": "metadata is a JSON string", "meta_no_format": "unknown format",
    "meta_classes_not_list": "'classes' must be a list of strings",
    "meta_architecture_number": "'architecture' must be a string",
    "meta_bindings_strings": "'bindings' must be", "meta_input_shape": "'input_shape'",
    "meta_run_data_limit": "'run_data.limit'", "meta_config_batch": "'config.batch'",
    "meta_config_lr_nan": "'config.lr'", "meta_config_optimizer": "'config.optimizer'",
    "progress_epoch_one": "'progress.epoch' must be a whole number >= 0, got \"one\"",
    "progress_step_negative": "'progress.step' must be a whole number >= 0, got -5",
    "progress_step_float": "'progress.step'", "progress_history_dict": "'progress.history'",
    "progress_loss_nan": "'progress.loss_sum'", "progress_list": "'progress' must be",
    "progress_epoch_bool": "'progress.epoch'",
    "graph_layers_dict": "'graph.layers' must be a list",
    "graph_layer_params_int": "'graph.layers[1].params'",
    "graph_layer_no_op": "'graph.layers[0].op' must be present",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_damaged_or_hostile_files_are_clear_errors(folder, tmp_path, kind):
    path = damaged(kind, folder / "w.npz", tmp_path)
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(str(path))
    assert time.perf_counter() - started < 2
    assert EXPECTED[kind] in caught.value.message, caught.value.message
    assert str(path) in caught.value.message


def test_a_good_file_still_loads_with_native_and_swapped_byte_order(folder, tmp_path):
    arrays, _ = checkpoint.load(str(folder / "w.npz"))
    weight = arrays[WEIGHT[:-4]]
    swapped = weight.astype(">f4")
    path = with_entry(folder / "w.npz", tmp_path / "big_endian.npz", WEIGHT,
                      npy({"descr": ">f4", "fortran_order": False, "shape": weight.shape},
                          swapped.tobytes()))
    again, _ = checkpoint.load(str(path))
    assert again[WEIGHT[:-4]].dtype == np.float32 and again[WEIGHT[:-4]].dtype.isnative
    assert np.array_equal(again[WEIGHT[:-4]], weight)
    # np.savez_compressed files (deflated, small) are read too
    compressed = write_zip(tmp_path / "deflated.npz", entries(folder / "w.npz"),
                           zipfile.ZIP_DEFLATED)
    assert np.array_equal(checkpoint.load(str(compressed))[0][WEIGHT[:-4]], weight)


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "w.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load(str(fifo))
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.load(str(tmp_path))


@pytest.mark.parametrize("kind", ["zip_bomb", "10^12_elements", "corrupt_deflate",
                                  "deflate64", "object", "meta_list", "progress_epoch_one"])
def test_the_cli_refuses_hostile_weights_in_bounded_memory(folder, tmp_path, kind):
    """`cnndsl eval --weights` on each: exit 1 with the file named, quickly, in well under
    1 GB (the zip bomb inflates to 1 GB)."""
    if kind == "zip_bomb":
        path = zip_bomb(tmp_path / "bomb.npz", 1024)
        assert path.stat().st_size < 2 * 2**20
    else:
        path = damaged(kind, folder / "w.npz", tmp_path)
    started = time.perf_counter()
    status, _, err, rss = cli("eval", "--weights", path, "--data", folder / "data.npz",
                              cwd=tmp_path)
    assert status == 1, err
    assert str(path.name) in err and time.perf_counter() - started < 60
    assert rss < MAX_RSS_MB, rss


# ---- 2. resume: progress and RNG state checked against the run ---------------------------

def trained_file(tmp_path) -> Path:
    make_trainer(tmp_path / "w.npz").run()
    return tmp_path / "w.npz"


RESUME_EDITS = {
    "step_10^9": (lambda m: m["progress"].update(step=10**9),
                  "'progress.step' must be a batch of the epoch (0 to 11"),
    "step_12": (lambda m: m["progress"].update(step=12), "'progress.step'"),
    "mid_epoch_after_the_end": (lambda m: m["progress"].update(step=3, seen=48, epoch=3,
                                                               history=[{}] * 3),
                                "'progress.epoch' must be below 3"),
    "history_short": (lambda m: m["progress"].update(history=[]), "'progress.history'"),
    "seen_too_many": (lambda m: m["progress"].update(epoch=0, history=[], step=2, seen=999),
                      "'progress.seen'"),
    "correct_over_seen": (lambda m: m["progress"].update(epoch=0, history=[], step=2,
                                                         seen=32, correct=33),
                          "'progress.correct'"),
    "rng_missing": (lambda m: m.pop("rng"), "'rng' must be the state of a PCG64"),
    "rng_garbage": (lambda m: m["rng"].update(state={"state": "x", "inc": 1}), "'rng'"),
    "rng_other_generator": (lambda m: m["rng"].update(bit_generator="MT19937"), "'rng'"),
    "rng_not_a_dict": (lambda m: m.update(rng=[1, 2]), "'rng' must be an object"),
}


@pytest.mark.parametrize("kind", list(RESUME_EDITS))
def test_resume_checks_progress_and_rng_against_the_run(tmp_path, kind):
    good = trained_file(tmp_path)
    edit, expected = RESUME_EDITS[kind]
    bad = with_meta(good, tmp_path / "bad.npz", lambda m: (edit(m), None)[1])
    trainer = make_trainer(tmp_path / "again.npz", epochs=3)
    before = {k: v.copy() for k, v in trainer.model.parameters().items()}
    with pytest.raises(CheckpointError) as caught:
        trainer.resume(str(bad))
    assert expected in caught.value.message, caught.value.message
    for name, array in trainer.model.parameters().items():  # nothing was changed
        assert np.array_equal(array, before[name])


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["progress"].update(step=10**9), "'progress.step'"),
    (lambda m: m["progress"].update(step=-5), "'progress.step'"),
    (lambda m: m["progress"].update(epoch="one"), "'progress.epoch'"),
    (lambda m: m["progress"].update(history="none"), "'progress.history'"),
    (lambda m: m["rng"].update(state={"state": -1, "inc": "x"}), "'rng'"),
    (lambda m: m["config"].update(epochs="five"), "'config.epochs'"),
], ids=["step_huge", "step_negative", "epoch_string", "history_string", "rng", "epochs"])
def test_cli_resume_of_a_tampered_file_is_exit_1(folder, tmp_path, edit, expected):
    for name in ("tiny.cnn", "data.npz"):
        shutil.copy(folder / name, tmp_path / name)
    with_meta(folder / "w.npz", tmp_path / "w.npz", lambda m: (edit(m), None)[1])
    before = sha(tmp_path / "w.npz")
    status, _, err, rss = cli("train", "tiny.cnn", "--data", "data.npz", "-o", "w.npz",
                              "--resume", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert status == 1 and expected in err, err
    assert sha(tmp_path / "w.npz") == before and rss < MAX_RSS_MB


# ---- 3. optimizer state: shape and dtype checked, never broadcast or cast ----------------

def test_a_3x3_momentum_for_a_4x1x3x3_weight_is_refused(tmp_path):
    good = trained_file(tmp_path)
    bad = with_entry(good, tmp_path / "bad.npz", "optim/velocity/conv1.weight.npy",
                     npy({"descr": "<f4", "fortran_order": False, "shape": (3, 3)},
                         bytes(36)))
    with pytest.raises(CheckpointError, match=r"optimizer state does not fit this network: "
                       r"'velocity/conv1.weight' is 3x3 there but 4x1x3x3 here"):
        make_trainer(tmp_path / "again.npz", epochs=3).resume(str(bad))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("damage, expected", [
    ("shape", "is 3x3 there but 4x1x3x3 here"), ("dtype", "is float64 there but float32"),
    ("missing", "it has no"), ("steps_float", "'steps' must be a whole number"),
    ("steps_negative", "'steps' must be a whole number"), ("not_array", "there but 4x1x3x3"),
])
def test_optimizer_state_is_checked_before_anything_changes(optimizer, damage, expected):
    params = {"conv1.weight": np.ones((4, 1, 3, 3), np.float32),
              "fc.bias": np.ones(3, np.float32)}
    make = (lambda: SGD(params, momentum=0.9)) if optimizer == "sgd" else (lambda: Adam(params))
    source, target = make(), make()
    source.steps = 3
    for array in source.state_dict().values():
        array[...] = 7
    state = {k: np.array(v) for k, v in source.state_dict().items()}
    slot = "velocity/conv1.weight" if optimizer == "sgd" else "v/conv1.weight"
    if damage == "shape":
        state[slot] = np.zeros((3, 3), np.float32)
    elif damage == "dtype":
        state[slot] = state[slot].astype(np.float64)
    elif damage == "missing":
        del state[slot]
    elif damage == "steps_float":
        state["steps"] = np.array(2.5)
    elif damage == "steps_negative":
        state["steps"] = np.array(-1)
    else:
        state[slot] = [[1.0]]
    before = {k: v.copy() for k, v in target.state_dict().items()}
    with pytest.raises(StateError, match=expected):
        target.load_state_dict(state)
    for key, array in target.state_dict().items():
        assert np.array_equal(array, before[key]), key
    target.load_state_dict({k: np.array(v) for k, v in source.state_dict().items()})
    assert target.steps == 3


def test_parameters_of_another_dtype_are_refused_not_cast(folder, tmp_path):
    arrays, meta = checkpoint.load(str(folder / "w.npz"))
    arrays["param/conv1.weight"] = arrays["param/conv1.weight"].astype(np.float64)
    model = Model(cnndsl.check_text(TINY))
    with pytest.raises(CheckpointError, match="conv1.weight' is float64 there but float32"):
        checkpoint.restore_model(model, arrays, meta, "w.npz")


# ---- 4. saving: a clear error, no temporary file left, the previous file untouched -------

def saved(tmp_path) -> tuple[Path, str, Model]:
    model = Model(cnndsl.check_text(TINY), seed=1)
    path = tmp_path / "w.npz"
    checkpoint.save(str(path), model, meta={"architecture": TINY})
    return path, sha(path), Model(cnndsl.check_text(TINY), seed=2)


def no_debris(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("where", ["savez_midway", "fsync", "replace", "mkstemp_readonly",
                                   "mkstemp_quota"])
def test_a_failed_save_leaves_the_previous_file_and_no_debris(tmp_path, monkeypatch, where):
    path, before, other = saved(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")

    def savez_then_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise full

    def raising(error):
        def fail(*args, **kwargs):
            raise error
        return fail

    patches = {"savez_midway": (np, "savez", savez_then_full, "the disk is full"),
               "fsync": (os, "fsync", raising(full), "the disk is full"),
               "replace": (os, "replace", raising(OSError(errno.EXDEV, "Cross-device")),
                           "Cross-device"),
               "mkstemp_readonly": (checkpoint.tempfile, "mkstemp",
                                    raising(OSError(errno.EROFS, "Read-only file system")),
                                    "read-only file system"),
               "mkstemp_quota": (checkpoint.tempfile, "mkstemp",
                                 raising(OSError(errno.EDQUOT, "Disk quota exceeded")),
                                 "quota")}
    module, name, replacement, expected = patches[where]
    monkeypatch.setattr(module, name, replacement)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save(str(path), other, meta={"architecture": TINY})
    assert expected in caught.value.message and str(path) in caught.value.message
    assert "previous file is unchanged" in caught.value.message
    assert caught.value.hint
    monkeypatch.undo()
    assert sha(path) == before and no_debris(tmp_path)


def test_saving_to_a_folder_or_under_a_file_is_a_clear_error(tmp_path):
    model = Model(cnndsl.check_text(TINY))
    with pytest.raises(CheckpointError, match="it is a folder"):
        checkpoint.save(str(tmp_path), model)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="a part of the path is a file"):
        checkpoint.save(str(tmp_path / "file" / "w.npz"), model)
    assert no_debris(tmp_path)


def test_a_saved_file_gets_the_usual_permissions(tmp_path):
    path, _, _ = saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_metrics_written_on_a_full_disk_are_a_clear_error(tmp_path, monkeypatch):
    from cnndsl.train import Progress, write_metrics

    out = tmp_path / "w.npz"
    state = Progress(epoch=1, history=[{"epoch": 1, "loss": 1.0, "accuracy": 0.5}])
    write_metrics(str(out), state)
    before = sha(tmp_path / "w.metrics.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="cannot save metrics .* the disk is full"):
        write_metrics(str(out), Progress(epoch=2, history=state.history * 2))
    monkeypatch.undo()
    assert sha(tmp_path / "w.metrics.json") == before and no_debris(tmp_path)


def resume_command(epochs=3):
    return ["train", "tiny.cnn", "--data", "data.npz", "-o", "out/w.npz", "--resume",
            "--epochs", str(epochs), "--no-progress"]


def prepared(folder, tmp_path) -> Path:
    for name in ("tiny.cnn", "data.npz"):
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "out").mkdir()
    shutil.copy(folder / "w.npz", tmp_path / "out" / "w.npz")
    return tmp_path / "out" / "w.npz"


def test_cli_disk_full_by_monkeypatch(folder, tmp_path):
    """The CLI in a subprocess whose file writes fail with ENOSPC once training started."""
    weights = prepared(folder, tmp_path)
    before = sha(weights)
    script = ("import errno, os, sys, numpy\n"
              "def full(*a, **k):\n"
              "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
              "numpy.savez = full\n"
              "from cnndsl.cli import main\n"
              f"sys.exit(main({resume_command()!r}))\n")
    status, _, err, rss = cli(cwd=tmp_path, python=["-c", script])
    assert status == 1, err
    assert "cannot save weights to 'out/w.npz': the disk is full" in err and "hint:" in err
    assert sha(weights) == before and no_debris(weights.parent) and rss < MAX_RSS_MB


def namespace_mount_works() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    mount = "mount -t tmpfs -o size=64k tmpfs /mnt"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True,
                          check=False)
    return done.returncode == 0


@pytest.mark.skipif(not namespace_mount_works(), reason="needs unshare -rm and tmpfs")
@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_cli_on_a_real_full_or_read_only_tmpfs(folder, tmp_path, fault):
    """A real file system: a small tmpfs filled up, or mounted read-only, in a private
    mount namespace (so nothing is left mounted): exit 1, clear message, the previous file
    byte-identical and no temporary file left."""
    weights = prepared(folder, tmp_path)
    keep = tmp_path / "keep"
    keep.mkdir()
    shutil.copy(weights, keep / "w.npz")
    before = sha(weights)
    out = tmp_path / "out"
    if fault == "disk_full":
        setup = (f"mount -t tmpfs -o size=1m tmpfs {out} && cp {keep}/w.npz {out}/ && "
                 f"(dd if=/dev/zero of={out}/fill bs=4k 2>/dev/null; true)")
    else:
        setup = (f"mount -t tmpfs -o size=1m tmpfs {out} && cp {keep}/w.npz {out}/ && "
                 f"mount -o remount,ro {out}")
    report = tmp_path / "report"
    script = (f"{setup} && {sys.executable} -m cnndsl.cli {' '.join(resume_command())}; "
              f"status=$?; sha256sum {out}/w.npz > {report}; ls -a {out} >> {report}; "
              "exit $status")
    status, _, err, rss = cli(cwd=tmp_path, python=(), wrap=("unshare", "-rm", "sh", "-c",
                                                             script, "--"))
    assert status == 1, err
    expected = "the disk is full" if fault == "disk_full" else \
        "'out' is on a read-only file system"
    assert f"cannot save weights to 'out/w.npz': {expected}" in err, err
    lines = report.read_text().split()
    assert lines[0] == before, "the previous weights file changed"
    assert not [name for name in lines if name.endswith(".tmp")], lines
    assert rss < MAX_RSS_MB


def test_cli_output_naming_a_folder_or_under_a_file_is_refused(folder, tmp_path):
    """(The CLI may refuse a folder up front as a usage error, exit 2; `checkpoint.save`
    refuses it too, tested above.)"""
    prepared(folder, tmp_path)
    (tmp_path / "dir.npz").mkdir()
    status, _, err, _ = cli("train", "tiny.cnn", "--data", "data.npz", "-o", "dir.npz",
                            "--overwrite", "--no-progress", cwd=tmp_path)
    assert status in (1, 2) and "dir.npz" in err and "folder" in err, err
    (tmp_path / "file").write_text("x")
    status, _, err, _ = cli("train", "tiny.cnn", "--data", "data.npz", "-o", "file/w.npz",
                            "--no-progress", cwd=tmp_path)
    assert status in (1, 2) and "file/w.npz" in err, err
    assert no_debris(tmp_path)


# ---- 5. concurrent savers never corrupt the file a reader sees ---------------------------

def test_concurrent_savers_and_a_reader(tmp_path):
    path = tmp_path / "w.npz"
    models = [Model(cnndsl.check_text(TINY), seed=seed) for seed in (1, 2)]
    checkpoint.save(str(path), models[0], meta={"architecture": TINY})
    weights = {tuple(m.parameters()["conv1.weight"].ravel()[:4]) for m in models}
    errors, loads, done = [], [0], threading.Event()

    def saver(model):
        try:
            for _ in range(60):
                checkpoint.save(str(path), model, meta={"architecture": TINY})
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def reader():
        while not done.is_set():
            try:
                arrays, _ = checkpoint.load(str(path))
                assert tuple(arrays["param/conv1.weight"].ravel()[:4]) in weights
                loads[0] += 1
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

    savers = [threading.Thread(target=saver, args=(m,)) for m in models]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in savers:
        thread.start()
    for thread in savers:
        thread.join()
    done.set()
    watcher.join()
    assert not errors, errors[:3]
    assert loads[0] >= 20 and no_debris(tmp_path)


def test_concurrent_saving_processes(folder, tmp_path):
    """Two processes saving to one path 40 times each while this one loads it."""
    script = ("import sys, cnndsl\nfrom cnndsl import checkpoint\nfrom cnndsl.model import Model\n"
              f"m = Model(cnndsl.check_text({TINY!r}), seed=int(sys.argv[1]))\n"
              "for _ in range(40):\n"
              f"    checkpoint.save({str(tmp_path / 'w.npz')!r}, m)\n")
    checkpoint.save(str(tmp_path / "w.npz"), Model(cnndsl.check_text(TINY), seed=1))
    savers = [subprocess.Popen([sys.executable, "-c", script, str(seed)]) for seed in (1, 2)]
    loads = 0
    while any(p.poll() is None for p in savers):
        checkpoint.load(str(tmp_path / "w.npz"))  # a CheckpointError fails the test
        loads += 1
    assert [p.returncode for p in savers] == [0, 0]
    assert loads > 0 and no_debris(tmp_path)


# ---- 6. SIGTERM saves like Ctrl-C --------------------------------------------------------

def test_sigterm_saves_and_resume_finishes(folder, tmp_path):
    """A real SIGTERM to `cnndsl train`: exit 130 (as for Ctrl-C; 143 if the CLI reports
    the signal), the weights file loads, and --resume finishes the run."""
    prepared(folder, tmp_path)
    command = [sys.executable, "-m", "cnndsl.cli", "train", "tiny.cnn", "--data", "data.npz",
               "-o", "term.npz", "--epochs", "30", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path)
    while True:  # the first epoch: kernels compiled, the signal handlers installed
        line = process.stdout.readline()
        if line.startswith("epoch 1/") or not line:
            break
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert process.returncode in (130, 143), err
    assert "interrupted: saved to term.npz" in err and "Traceback" not in err
    _, meta = checkpoint.load(str(tmp_path / "term.npz"))
    assert 1 <= meta["progress"]["epoch"] < 30
    assert no_debris(tmp_path)
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    _, meta = checkpoint.load(str(tmp_path / "term.npz"))
    assert meta["progress"]["epoch"] == 30 and len(meta["progress"]["history"]) == 30


def test_sigterm_in_the_trainer_raises_interrupted_after_saving(tmp_path, monkeypatch):
    from cnndsl.train import Interrupted

    trainer = make_trainer(tmp_path / "w.npz", epochs=3)
    real = trainer.model.loss_and_grads
    calls = [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "loss_and_grads", counting)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        trainer.run()
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # restored
    _, meta = checkpoint.load(str(tmp_path / "w.npz"))
    assert meta["progress"]["step"] == 5
