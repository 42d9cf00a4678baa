"""`cnndsl sweep`: candidates read from --grid/--range/--random and shape-checked before
anything runs; trials on a local Ray Tune (skipped without Ray); the table, CSV, JSON,
Pareto PNG and best weights; an infeasible binding reported and never launched; a killed
sweep resumed runs only its missing trials."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from cnndsl.sweep import space
from cnndsl.sweep.results import pareto_front

#: 28x28 Fashion-MNIST; m = 5 pools 28 -> 14 -> 7 -> 3 -> 1 -> (nothing): infeasible
NETWORK = """network Family
input 28x28x1
let k = 1, m = 1
[(Conv(4, 3x3, pad=same) -> ReLU) * k -> MaxPool(2)] * m -> FC(classes) -> Softmax
"""
FASHION = "/usr/share/datasets/fashion-mnist"
#: four feasible trials, run one after another (each with every core)
ONE_AT_A_TIME = ["family.cnn", "--grid", "k=1,2", "--grid", "m=1,2", "--epochs", "1",
                 "--limit", "3000", "-o", "out", "--no-progress",
                 "--threads-per-trial", str(os.cpu_count())]


def sweep(tmp_path, *argv, wait=True, **kwargs):
    """`python -m cnndsl sweep ARGV` in tmp_path, in a session of its own (so a test can
    send Ctrl-C to it and the Ray processes it starts, as a terminal would)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "cnndsl", "sweep", *argv],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               **kwargs)
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def wait_for_a_finished_trial(process, folder) -> None:
    """Until the sweep's results.json records a finished trial (or the sweep ends)."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
        try:
            if any(e["status"] == "done" for e in entries(folder).values()):
                return
        except (OSError, ValueError):  # not written yet, or being replaced
            continue


def stop_after_a_finished_trial(tmp_path, signum):
    """Start the four-trial sweep of ONE_AT_A_TIME in tmp_path and send `signum` to its
    process group (the sweep and its Ray, as a terminal's Ctrl-C reaches them all) once a
    trial has finished; (process, stdout, stderr) after it ended."""
    pytest.importorskip("ray.tune")
    (tmp_path / "family.cnn").write_text(NETWORK)
    process = sweep(tmp_path, *ONE_AT_A_TIME, wait=False)
    wait_for_a_finished_trial(process, tmp_path / "out")
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=120)
    return process, out, err


def entries(folder) -> dict:
    document = json.loads((folder / "results.json").read_text())
    return {entry["trial"]: entry for entry in document["trials"]}


# ---- candidates (no Ray needed) ------------------------------------------------------------

def test_grid_is_the_product_first_flag_slowest():
    found = space.candidates([space.parse_grid("k=1,2"), space.parse_grid("m=1,5")], [], 0,
                             0, ["k", "m"])
    assert [c.values for c in found] == [{"k": 1, "m": 1}, {"k": 1, "m": 5},
                                         {"k": 2, "m": 1}, {"k": 2, "m": 5}]
    assert [c.number for c in found] == [1, 2, 3, 4]
    assert found[0].bindings == {"k": 1, "m": 1} and found[0].settings == {}


def test_settings_and_bindings_are_told_apart_and_checked():
    found = space.candidates([space.parse_grid("optimizer=sgd,adam"),
                              space.parse_grid("k=2")], [], 0, 0, ["k"])
    assert found[1].settings == {"optimizer": "adam"} and found[1].bindings == {"k": 2}
    with pytest.raises(space.SweepUsage, match="optimizer must be one of"):
        space.candidates([space.parse_grid("optimizer=sgd,adma")], [], 0, 0, [])
    with pytest.raises(space.SweepUsage, match="the binding k takes whole numbers"):
        space.candidates([space.parse_grid("k=1,2.5")], [], 0, 0, ["k"])
    with pytest.raises(space.SweepUsage, match="did you mean 'lr'"):
        space.candidates([space.parse_grid("lrr=0.1")], [], 0, 0, ["k"])
    with pytest.raises(space.SweepUsage, match="epochs is not swept"):
        space.candidates([space.parse_grid("epochs=1,2")], [], 0, 0, [])


def test_random_draws_are_seeded_within_their_ranges():
    ranges = [space.parse_range("lr=1e-4:1e-2:log"), space.parse_range("k=1:3")]
    first = space.candidates([], ranges, 30, 7, ["k"])
    again = space.candidates([], ranges, 30, 7, ["k"])
    other = space.candidates([], ranges, 30, 8, ["k"])
    assert [c.values for c in first] == [c.values for c in again]
    assert [c.values for c in first] != [c.values for c in other]
    assert all(1e-4 <= c.values["lr"] <= 1e-2 for c in first)
    assert {c.values["k"] for c in first} == {1, 2, 3}  # whole numbers, both ends drawn
    logs = np.log10([c.values["lr"] for c in first])
    assert logs.min() < -3.5 and logs.max() > -2.5  # log-uniform: both decades reached


@pytest.mark.parametrize("flag, text, message", [
    ("grid", "k", "expected NAME=VALUES"), ("grid", "k=1,1", "listed twice"),
    ("range", "lr=0.1:0.01", "LOW must be below HIGH"),
    ("range", "lr=0:0.1:log", "a log range needs LOW > 0"),
    ("range", "lr=a:b", "must be numbers")])
def test_unreadable_flags_say_why(flag, text, message):
    parse = space.parse_grid if flag == "grid" else space.parse_range
    with pytest.raises(space.SweepUsage, match=message):
        parse(text)


def test_infeasible_candidates_carry_their_located_error():
    found = space.candidates([space.parse_grid("m=1,5")], [], 0, 0, ["k", "m"])
    space.check_candidates(found, NETWORK, "family.cnn", {}, {}, {"classes": 10})
    feasible, infeasible = found
    assert feasible.feasible and feasible.params == 3 * 3 * 1 * 4 + 4 + 14 * 14 * 4 * 10 + 10
    assert not infeasible.feasible and infeasible.params is None
    assert infeasible.error.startswith("family.cnn:4:")
    assert "MaxPool 'maxpool5'" in infeasible.error and "^" in infeasible.error


def test_pareto_front():
    # (cost, score): 1 and 3 are beaten by 2 (cheaper and better); 4 is the best, dearest
    points = [(10, 0.80), (5, 0.85), (20, 0.70), (40, 0.90), (5, 0.85)]
    assert pareto_front(points) == [1, 4, 3]  # ties both stay, in order of cost
    assert pareto_front([(1, 0.5), (2, 0.3)], mode="min") == [0, 1]


def test_sweep_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import builtins

    from cnndsl.cli import main

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "family.cnn").write_text(NETWORK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["sweep", "family.cnn", "--grid", "k=1,2"]) == 1
    err = capsys.readouterr().err
    assert "Ray Tune, which is not installed" in err and "pip install 'cnndsl[sweep]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "family.sweep").exists()


@pytest.mark.parametrize("argv, message", [
    (["--grid", "q=1,2"], "'q' is neither a let binding"),
    (["--range", "lr=1e-3:1e-1"], "--range needs --random N"),
    (["--random", "3"], "--random needs at least one --range"),
    ([], "nothing to sweep"),
    (["--grid", "k=1", "--threads-per-trial", "0"], "--threads-per-trial must be at least 1"),
    (["--grid", "k=1", "--val", "0"], "--metric val_acc needs a validation split")])
def test_usage_errors(tmp_path, monkeypatch, capsys, argv, message):
    from cnndsl.cli import main

    (tmp_path / "family.cnn").write_text(NETWORK)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "family.cnn", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "family.sweep").exists()


def test_overwrite_removes_the_previous_sweeps_files_only_when_it_starts(tmp_path,
                                                                      monkeypatch):
    from cnndsl.cli import main
    from cnndsl.commands.sweep import OUTPUTS, _clear

    (tmp_path / "family.cnn").write_text(NETWORK)
    old = tmp_path / "family.sweep"
    (old / "trials").mkdir(parents=True)
    for name in ("results.json", "results.csv", "pareto.png", "best.npz", "notes.txt"):
        (old / name).write_text("the previous sweep's")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # a usage error: nothing of the old sweep is removed
        main(["sweep", "family.cnn", "--overwrite", "--grid", "q=1"])
    assert (old / "best.npz").exists() and (old / "trials").is_dir()
    _clear(old, own_storage=True)  # what a new sweep does before its first trial
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]  # the user's file stays
    assert set(OUTPUTS) >= {"results.json", "best.npz", "trials"}


# ---- on Ray Tune ---------------------------------------------------------------------------

needs_ray = pytest.mark.skipif(
    not any(os.path.exists(os.path.join(p, "ray")) for p in sys.path if p),
    reason="Ray Tune is not installed (pip install 'cnndsl[sweep]')")
needs_data = pytest.mark.skipif(not os.path.isdir(FASHION),
                                reason="dataset-fashion-mnist is not installed")


@needs_ray
@needs_data
def test_a_2x2_grid_on_a_local_ray(tmp_path):
    """The issue's sweep: 2x2 grid, 1 epoch on 3,000 images; one binding does not check."""
    pytest.importorskip("ray.tune")
    (tmp_path / "family.cnn").write_text(NETWORK)
    code, out, err = sweep(tmp_path, "family.cnn", "--grid", "k=1,2", "--grid", "m=1,5",
                           "--epochs", "1", "--limit", "3000", "-o", "out", "--no-progress")
    assert code == 0, err
    folder = tmp_path / "out"
    # reported and skipped: the located error on stderr and in the table, never launched
    assert "infeasible, not run: #2 k=1 m=5" in err and "infeasible, not run: #4" in err
    assert "family.cnn:4:" in err and "MaxPool 'maxpool5'" in err
    found = entries(folder)
    assert [found[n]["status"] for n in (1, 2, 3, 4)] == ["done", "infeasible", "done",
                                                          "infeasible"]
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["trial1.npz",
                                                                     "trial3.npz"]
    # the table: ranked by val_acc, every column
    table = out[out.index("trial  k  m"):].splitlines()
    assert table[0].split() == ["trial", "k", "m", "params", "MACs", "val_acc", "epoch",
                                "test_acc", "time", "status"]
    ranked = sorted((1, 3), key=lambda n: -found[n]["best"])
    assert [line.split()[0] for line in table[1:3]] == [f"#{n}" for n in ranked]
    assert all(found[n]["params"] > 0 and found[n]["macs"] > 0 for n in (1, 3))
    assert found[3]["macs"] > found[1]["macs"]  # k = 2 has a second conv
    assert all(0 < found[n]["best"] <= 1 and found[n]["best_epoch"] == 1 for n in (1, 3))
    # CSV: a row per candidate, the bindings as columns
    import csv

    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [row["trial"] for row in rows][:2] == [str(n) for n in ranked]
    assert {row["status"] for row in rows[2:]} == {"infeasible"}
    assert rows[0]["k"] in ("1", "2") and rows[0]["params"] and rows[0]["macs"]
    # the plot: a real PNG of the size it is drawn at
    with Image.open(folder / "pareto.png") as image:
        assert image.format == "PNG" and image.size[0] > 800
    # the best trial's weights: its best epoch, the accuracy the table gives on its test set
    _check_best_weights(folder, found[ranked[0]], limit=3000)


def _check_best_weights(folder, best, limit):
    from cnndsl import checkpoint
    from cnndsl.data import load_dataset
    from cnndsl.datasets import seeded_subset
    from cnndsl.frontend import check_text
    from cnndsl.model import Model
    from cnndsl.train import evaluate

    arrays, meta = checkpoint.load(str(folder / "best.npz"))
    assert meta["bindings"]["k"] == best["values"]["k"]
    assert meta["sweep"]["trial"] == best["trial"]
    model = Model(check_text(meta["architecture"], meta["bindings"]))
    checkpoint.restore_model(model, arrays, meta, "best.npz")
    data = load_dataset("fashion-mnist")
    x_test, y_test = seeded_subset(data.x_test, data.y_test, limit, 1)
    assert evaluate(model, x_test, y_test)["accuracy"] == pytest.approx(
        best["test_accuracy"], abs=1e-12)


@needs_ray
@needs_data
def test_a_killed_sweep_resumed_runs_only_the_missing_trials(tmp_path):
    folder = tmp_path / "out"
    stop_after_a_finished_trial(tmp_path, signal.SIGKILL)  # the sweep and its Ray, at once
    before = entries(folder)
    finished = [n for n, e in before.items() if e["status"] == "done"]
    assert finished and len(finished) < 4, before
    kept = {n: (folder / "trials" / f"trial{n}.npz").read_bytes() for n in finished}

    code, out, err = sweep(tmp_path, "family.cnn", "-o", "out", "--resume", "--no-progress")
    assert code == 0, err
    assert f"{len(finished)} already done; running {4 - len(finished)}" in out
    ran = [line.split()[1] for line in out.splitlines() if line.startswith("trial #")]
    assert sorted(ran) == sorted(f"#{n}" for n in range(1, 5) if n not in finished)
    after = entries(folder)
    assert all(after[n]["status"] == "done" for n in range(1, 5))
    for n in finished:  # not run again: the same record, the same weights file
        assert after[n] == before[n]
        assert (folder / "trials" / f"trial{n}.npz").read_bytes() == kept[n]


@needs_ray
@needs_data
def test_ctrl_c_keeps_finished_trials_and_resume_refuses_other_flags(tmp_path):
    folder = tmp_path / "out"
    process, out, err = stop_after_a_finished_trial(tmp_path, signal.SIGINT)  # as Ctrl-C
    assert process.returncode == 130, err
    assert "interrupted:" in err and "--resume" in err and "Traceback" not in err
    statuses = [e["status"] for e in entries(folder).values()]
    assert "done" in statuses and "not run" in statuses
    assert "not run" in out  # the table lists them

    code, _, err = sweep(tmp_path, "family.cnn", "-o", "out", "--resume", "--epochs", "2")
    assert code == 1 and "differs from the one in 'out': --epochs 2 (saved: 1)" in err
    code, _, err = sweep(tmp_path, *ONE_AT_A_TIME)
    assert code == 1 and "holds a sweep" in err and "--resume continues it" in err
