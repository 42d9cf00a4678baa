"""Data augmentation (issue 14, cnndsl.augment): each transform does what it says on tiny
images, batches are changed, reproducible per seed, resumable, and only the training
batches are ever touched; bad settings are located errors with hints (file, flags, fit)."""

import numpy as np
import pytest
from test_train import TINY, synthetic

import cnndsl
from cnndsl import augment, checkpoint
from cnndsl import train as train_module
from cnndsl.augment import affine_matrix, augment_batch, batch_rng, flip, shift, warp
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.fit import fit
from cnndsl.model import Model
from cnndsl.train import Interrupted, Trainer
from cnndsl.trainconfig import SettingError, TrainConfig

ON = {"shift": 1, "flip": True}


def dot(shape, *where):
    """A zero image (1×*shape×1) with a single 1 at `where`."""
    x = np.zeros((1, *shape, 1), np.float32)
    x[(0, *where, 0)] = 1
    return x


def ramp(n=2, h=5, w=5, c=1):
    return np.arange(n * h * w * c, dtype=np.float32).reshape(n, h, w, c) + 1


# ---- each transform on a tiny image -----------------------------------------------------

def test_shift_moves_a_pixel_by_its_offset_and_zero_fills():
    moved = shift(dot((5, 5), 2, 3), np.array([[1, -2]]))
    assert np.argwhere(moved[0, ..., 0]).tolist() == [[3, 1]]
    x = ramp()
    out = shift(x, np.array([[2, 0], [0, 1]]))
    assert np.array_equal(out[0, 2:], x[0, :3]) and not out[0, :2].any()
    assert np.array_equal(out[1, :, 1:], x[1, :, :4]) and not out[1, :, 0].any()


def test_shift_with_edge_fill_repeats_the_border():
    x = ramp(1)
    out = shift(x, np.array([[0, -1]]), fill="edge")
    assert np.array_equal(out[0, :, :4], x[0, :, 1:])
    assert np.array_equal(out[0, :, 4], x[0, :, 4])


def test_shift_and_flip_in_1d_and_3d():
    signal = np.arange(1, 7, dtype=np.float32).reshape(1, 6, 1)
    assert shift(signal, np.array([[2]]))[0, :, 0].tolist() == [0, 0, 1, 2, 3, 4]
    assert flip(signal, np.array([True]))[0, :, 0].tolist() == [6, 5, 4, 3, 2, 1]
    volume = dot((3, 4, 5), 0, 1, 2)
    assert np.argwhere(shift(volume, np.array([[1, 2, -1]]))[0, ..., 0]).tolist() == \
        [[1, 3, 1]]
    assert np.argwhere(flip(volume, np.array([True]))[0, ..., 0]).tolist() == [[0, 1, 2]]
    assert np.argwhere(flip(dot((3, 4, 6), 0, 1, 1), np.array([True]))[0, ..., 0]).tolist() \
        == [[0, 1, 4]]


def test_flip_mirrors_left_to_right_only_the_chosen_images():
    x = ramp(3, 4, 6, 2)
    out = flip(x, np.array([True, False, True]))
    assert np.array_equal(out[0], x[0, :, ::-1]) and np.array_equal(out[2], x[2, :, ::-1])
    assert np.array_equal(out[1], x[1])


@pytest.mark.parametrize("size", [5, 4])
def test_rotate_by_90_turns_a_pattern_counter_clockwise(size):
    x = np.zeros((1, size, size, 1), np.float32)
    x[0, 0, 1:, 0] = 1  # an L: the top row from column 1 on, and the right column
    x[0, :, -1, 0] = 2
    out = warp(x, affine_matrix(90)[None])
    assert np.allclose(out, np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    back = warp(out, affine_matrix(-90)[None])
    assert np.allclose(back, x, atol=1e-6)


def test_scale_and_shear_move_pixels_as_their_maps_say():
    zoomed = warp(dot((5, 5), 3, 3), affine_matrix(zoom=2)[None])  # offset (1, 1) -> (2, 2)
    assert zoomed[0, 4, 4, 0] == pytest.approx(1) and zoomed[0, 3, 3, 0] == pytest.approx(0.25)
    sheared = warp(dot((5, 5), 1, 2), affine_matrix(shear=45)[None])  # row offset -1
    assert np.argwhere(sheared[0, ..., 0] > 0.99).tolist() == [[1, 1]]


def test_elastic_with_alpha_0_is_the_identity_and_otherwise_a_smooth_field():
    x = ramp(2, 6, 7, 3)
    field = augment.elastic_displacement(np.random.default_rng(0), 2, (6, 7), 0.0, 4.0)
    assert not field.any()
    assert np.array_equal(warp(x, np.stack([np.eye(2)] * 2), field), x)
    field = augment.elastic_displacement(np.random.default_rng(0), 64, (28, 28), 34.0, 4.0)
    assert field.shape == (64, 28, 28, 2)
    assert 0.3 < np.abs(field).mean() < 3  # about a pixel or two, as Simard et al.'s
    steps = np.abs(np.diff(field, axis=2)).mean()
    assert steps < 0.2 * np.abs(field).mean()  # neighbours move together: smooth


@pytest.mark.parametrize("size, sigma", [(28, 4.0), (9, 1.5), (5, 10.0)])
def test_the_elastic_smoothing_is_scipys_gaussian_filter(size, sigma):
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(0).uniform(-1, 1, (3, size, size + 3))
    smooth = augment.gaussian_matrix(size, sigma) @ noise @ \
        augment.gaussian_matrix(size + 3, sigma).T
    assert np.allclose(smooth, gaussian_filter(noise, (0, sigma, sigma), mode="constant"),
                       atol=1e-6)


def test_bilinear_sampling_far_outside_is_fill():
    x = ramp(1, 3, 4)
    far = np.full((1, 3, 4), 40.0)
    assert not augment.bilinear(x, far, far, "zero").any()
    assert np.all(augment.bilinear(x, -far, far, "edge") == x[0, 0, 3])


def test_bilinear_sampling_half_a_pixel_and_what_lies_beyond():
    x = ramp(1, 3, 4)
    half = np.zeros((1, 3, 4, 2))
    half[..., 1] = 0.5  # each output pixel shows the input half a pixel to its right
    identity = np.eye(2)[None]
    zero, edge = warp(x, identity, half, "zero"), warp(x, identity, half, "edge")
    assert np.allclose(zero[0, :, :3], (x[0, :, :3] + x[0, :, 1:]) / 2)
    assert np.allclose(zero[0, :, 3], x[0, :, 3] / 2)  # beyond the border is 0
    assert np.allclose(edge[0, :, 3], x[0, :, 3])  # the border repeated


# ---- batches: changed, reproducible, seeded -----------------------------------------------

def test_augmented_batches_differ_and_leave_the_input_alone():
    x, _ = synthetic(32, 0)
    before = x.copy()
    for settings in (ON, {"rotate": 15}, {"scale": 0.2, "shear": 10},
                     {"elastic": 34, "fill": "edge"}):
        out = augment_batch(x, settings, batch_rng(0, 0, 0))
        assert out.shape == x.shape and out.dtype == x.dtype
        changed = np.any(out != x, axis=(1, 2, 3))
        assert changed.mean() > 0.5, settings
        assert np.array_equal(x, before)


def test_same_seed_same_batch_other_seed_epoch_or_step_another():
    x, _ = synthetic(32, 0)
    settings = {"shift": 2, "flip": True, "rotate": 10, "elastic": 8}
    first = augment_batch(x, settings, batch_rng(7, 1, 3))
    assert np.array_equal(first, augment_batch(x, settings, batch_rng(7, 1, 3)))
    for other in [(8, 1, 3), (7, 2, 3), (7, 1, 4)]:
        assert not np.array_equal(first, augment_batch(x, settings, batch_rng(*other)))


def test_nothing_on_changes_nothing():
    x, _ = synthetic(8, 0)
    assert not augment.active(TrainConfig())
    assert np.array_equal(augment_batch(x, TrainConfig(), batch_rng(0, 0, 0)), x)
    assert augment.describe(TrainConfig()) == ""
    assert augment.describe(TrainConfig(shift=2, flip=True, fill="edge")) == \
        "shift 2, flip, edge fill"


# ---- the trainer: only training batches, reproducible, resumable ---------------------------

def trainer(out=None, epochs=2, seed=0, **settings):
    model = Model(cnndsl.check_text(TINY), seed=seed)
    x, y = synthetic(240, 0)
    xt, yt = synthetic(60, 1)
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch=16, epochs=epochs,
                         seed=seed, val=0.2, **settings)
    splits = (x[:192], y[:192], x[192:], y[192:], xt, yt)
    return Trainer(model, config, splits, None if out is None else str(out),
                   {"architecture": TINY}, progress_bar=False, log=lambda line: None)


def test_only_training_batches_are_augmented(monkeypatch):
    run = trainer(**ON)
    x_train, x_val, x_test = run.x_train, run.x_val, run.x_test
    copies = [a.copy() for a in (x_train, x_val, x_test)]
    augmented, stepped, evaluated = [], [], []
    real_augment, real_evaluate = augment.augment_batch, train_module.evaluate

    def spy_augment(x, settings, rng):
        augmented.append(x.copy())
        return real_augment(x, settings, rng)

    def spy_evaluate(model, x, y, *args, **kwargs):
        evaluated.append(x)
        return real_evaluate(model, x, y, *args, **kwargs)

    real_step = run.model.loss_and_grads

    def spy_step(x, y):
        stepped.append(x)
        return real_step(x, y)

    monkeypatch.setattr(augment, "augment_batch", spy_augment)
    monkeypatch.setattr(train_module, "evaluate", spy_evaluate)
    run.model.loss_and_grads = spy_step
    run.run()
    assert len(augmented) == len(stepped) == 2 * 12  # every training step, nothing else
    rows = {row.tobytes() for row in x_train}
    held_out = {row.tobytes() for row in np.concatenate([x_val, x_test])}
    for batch in augmented:  # what was augmented: rows of the training split only
        assert all(row.tobytes() in rows and row.tobytes() not in held_out for row in batch)
    assert sum(not np.array_equal(a, s) for a, s in zip(augmented, stepped)) == len(stepped)
    # validation after each epoch, the test split once: the very arrays, bit for bit
    assert [x is x_val for x in evaluated] == [True, True, False]
    assert evaluated[2] is x_test
    for array, copy in zip((x_train, x_val, x_test), copies):
        assert np.array_equal(array, copy)


def test_augmented_runs_are_reproducible_and_differ_from_plain_ones():
    first, second, plain, other = (trainer(**ON), trainer(**ON), trainer(),
                                   trainer(shift=1, flip=True, rotate=10))
    for run in (first, second, plain, other):
        run.run()
    weights = [run.model.parameters() for run in (first, second, plain, other)]
    for name, array in weights[0].items():
        assert np.array_equal(array, weights[1][name]), name
    assert any(not np.array_equal(array, weights[2][name]) for name, array in weights[0].items())
    assert any(not np.array_equal(array, weights[3][name]) for name, array in weights[0].items())


def test_a_run_stopped_mid_epoch_resumes_with_the_same_augmented_batches(tmp_path):
    straight = trainer(tmp_path / "straight.npz", epochs=3, rotate=10, **ON)
    straight.run()
    out = tmp_path / "stopped.npz"
    stopped = trainer(out, epochs=3, rotate=10, **ON)
    real_step, calls = stopped.model.loss_and_grads, []

    def counting(x, y):
        calls.append(1)
        if len(calls) == 17:  # the 5th batch of the 2nd epoch: stop, as Ctrl-C does
            stopped._stop = True
        return real_step(x, y)

    stopped.model.loss_and_grads = counting
    with pytest.raises(Interrupted):
        stopped.run()
    _, meta = checkpoint.load(str(out))
    assert meta["config"]["shift"] == 1 and meta["config"]["rotate"] == 10
    resumed = trainer(out, epochs=3, rotate=10, **ON)
    resumed.resume(str(out))
    resumed.run()
    for name, array in straight.model.parameters().items():
        assert np.array_equal(array, resumed.model.parameters()[name]), name


# ---- settings: the train block, flags, fit ----------------------------------------------

def with_block(block, shape="8x8x1", body="Conv(4, 3) -> ReLU -> FC(3) -> Softmax"):
    return f"network T\ninput {shape}\ntrain {{ {block} }}\n{body}\n"


def located(text):
    with pytest.raises(CnnDslError) as caught:
        cnndsl.check_text(text)
    error = caught.value
    assert error.span is not None and error.span.line == 3
    return error


def test_the_train_block_takes_augmentation_settings():
    graph = cnndsl.check_text(with_block("shift = 2, flip = true, rotate = 10, scale = 0.1, "
                                         "shear = 5, elastic = 34, elastic_sigma = 4, "
                                         "fill = edge"))
    assert graph.graph["train_settings"] == {
        "shift": 2, "flip": True, "rotate": 10.0, "scale": 0.1, "shear": 5.0,
        "elastic": 34.0, "elastic_sigma": 4.0, "fill": "edge"}
    assert cnndsl.check_text(with_block("shift = 2, flip = true", "64x1"))
    assert cnndsl.check_text(with_block("shift = 1, flip = true", "6x6x6x1"))


@pytest.mark.parametrize("block, column, message, hint", [
    ("shfit = 2", 9, "unknown training setting 'shfit'", "did you mean 'shift'?"),
    ("shift = -1", 17, "shift must be a whole number >= 0", None),
    ("shift = 8", 9, "shift 8 would move a 8x8x1 input out of view (at most 7", "shift = 2"),
    ("flip = 1", 16, "flip must be true or false", None),
    ("rotate = 200", 18, "rotate must be at most 180", "rotate = 10"),
    ("scale = 1", 17, "scale must be below 1", "0.9 and 1.1"),
    ("shear = 75", 17, "shear must be at most 60", "shear = 10"),
    ("elastic = -3", 19, "elastic must be positive", None),
    ("elastic_sigma = 0", 25, "elastic_sigma must be positive", None),
    ("fill = zeros", 16, "fill must be one of zero, edge, got zeros; did you mean 'zero'?",
     None),
])
def test_bad_settings_are_located_with_hints(block, column, message, hint):
    error = located(with_block(block))
    assert error.span.col == column and message in error.message
    assert (hint is None and error.hint is None) or hint in error.hint


@pytest.mark.parametrize("shape", ["64x1", "6x6x6x1"])
def test_warps_of_1d_or_3d_inputs_are_refused_at_the_setting(shape):
    error = located(with_block("shift = 2, rotate = 10", shape))
    assert error.span.col == 20
    assert f"rotate works on 2-D images (H x W x C); this network's input {shape}" in \
        error.message
    assert "shift and flip work on 1-D, 2-D and 3-D inputs" in error.hint


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = synthetic(240, 0)
    xt, yt = synthetic(60, 1)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    (tmp_path / "tiny.cnn").write_text(TINY.replace("epochs = 3", "epochs = 1"))
    signal = "network S\ninput 8x1\ntrain { epochs = 1 }\nConv(2, 3) -> FC(3) -> Softmax\n"
    (tmp_path / "signal.cnn").write_text(signal)
    return tmp_path


def run_cli(*args):
    return main(["train", *args, "--data", "data.npz", "--no-progress"])


@pytest.mark.parametrize("flags, message", [
    (["--shift", "-2"], "--shift: shift must be a whole number >= 0, got -2"),
    (["--fill", "zeros"], "--fill: fill must be one of zero, edge, got zeros; did you mean"),
    (["--rotate", "400"], "--rotate: rotate must be at most 180"),
    (["--shift", "9"], "--shift: shift 9 would move a 8x8x1 input out of view"),
    (["--no-augment", "--flip"], "--no-augment and --flip contradict each other"),
])
def test_bad_flags_are_usage_errors(files, capsys, flags, message):
    with pytest.raises(SystemExit) as caught:
        run_cli("tiny.cnn", *flags)
    assert caught.value.code == 2 and message in capsys.readouterr().err
    assert not (files / "tiny.npz").exists()


def test_a_warp_flag_for_a_1d_network_names_what_works(files, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "signal.cnn", "--data", "signal.npz", "--elastic", "34"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--elastic: elastic works on 2-D images (H x W x C); this network's input 8x1 " \
           "is 1-D; shift and flip work on 1-D, 2-D and 3-D inputs" in err


def test_cli_flags_train_augmented_and_resume_keeps_them(files, capsys):
    assert run_cli("tiny.cnn", "--shift", "1", "--flip", "--fill", "edge") == 0
    out = capsys.readouterr().out
    assert "augmented: shift 1, flip, edge fill" in out
    _, meta = checkpoint.load("tiny.npz")
    assert (meta["config"]["shift"], meta["config"]["flip"], meta["config"]["fill"]) == \
        (1, True, "edge")
    assert run_cli("tiny.cnn", "--resume", "--epochs", "2") == 0  # keeps the augmentation
    assert "augmented: shift 1, flip, edge fill" in capsys.readouterr().out
    assert run_cli("tiny.cnn", "--resume", "--epochs", "3", "--no-flip") == 1
    assert "--flip off (saved: on)" in capsys.readouterr().err


def test_no_augment_turns_off_the_files_settings(files, capsys):
    (files / "aug.cnn").write_text(TINY.replace("epochs = 3", "epochs = 1, shift = 1, "
                                                "flip = true"))
    assert run_cli("aug.cnn", "-o", "a.npz") == 0
    assert "augmented: shift 1, flip" in capsys.readouterr().out
    assert run_cli("aug.cnn", "-o", "b.npz", "--no-augment") == 0
    assert "augmented" not in capsys.readouterr().out
    assert run_cli("tiny.cnn", "-o", "c.npz") == 0
    capsys.readouterr()
    plain, augmented, off = (checkpoint.load(f"{name}.npz")[0] for name in "cab")
    weights = [k for k in plain if k.startswith("param")] or list(plain)
    assert all(np.array_equal(plain[k], off[k]) for k in weights)
    assert not all(np.array_equal(plain[k], augmented[k]) for k in weights)


def test_fit_augment_equals_the_train_block_and_changes_the_weights():
    x, y = synthetic(240, 0)
    given, in_file, plain = (cnndsl.compile(TINY),
                             cnndsl.compile(TINY.replace("epochs = 3", "shift = 1, flip = true")),
                             cnndsl.compile(TINY))
    fit(given, x, y, epochs=1, augment={"shift": 1, "flip": True}, verbose=False,
        progress=False)
    fit(in_file, x, y, epochs=1, verbose=False, progress=False)
    fit(plain, x, y, epochs=1, verbose=False, progress=False)
    for name, array in given.parameters().items():
        assert np.array_equal(array, in_file.parameters()[name]), name
    assert any(not np.array_equal(array, plain.parameters()[name])
               for name, array in given.parameters().items())


@pytest.mark.parametrize("augment_argument, message, hint", [
    ({"shfit": 1}, "unknown augmentation setting 'shfit'", "did you mean 'shift'?"),
    ({"rotate": -5}, "augment['rotate'] must be positive", None),
    (True, "augment must be a dict of settings or False, got True", "augment={'shift': 2"),
])
def test_fit_refuses_bad_augment_arguments(augment_argument, message, hint):
    x, y = synthetic(16, 0)
    with pytest.raises(SettingError) as caught:
        fit(cnndsl.compile(TINY), x, y, epochs=1, augment=augment_argument, verbose=False)
    assert message in str(caught.value)
    assert hint is None or hint in caught.value.hint


def test_fit_refuses_a_warp_of_a_1d_input():
    model = cnndsl.compile("network S\ninput 8x1\nConv(2, 3) -> FC(3) -> Softmax\n")
    x = np.zeros((12, 8, 1), np.float32)
    with pytest.raises(SettingError, match="scale works on 2-D images"):
        model.fit(x, np.zeros(12, int), augment={"scale": 0.1}, verbose=False)
    model.fit(x, np.zeros(12, int), epochs=1, augment={"shift": 2, "flip": True},
              verbose=False, progress=False)


def test_fit_augment_false_turns_off_the_files_settings():
    x, y = synthetic(240, 0)
    text = TINY.replace("epochs = 3", "epochs = 1, shift = 1, flip = true")
    off, plain = cnndsl.compile(text), cnndsl.compile(TINY)
    off.fit(x, y, augment=False, verbose=False, progress=False)
    fit(plain, x, y, epochs=1, verbose=False, progress=False)
    for name, array in plain.parameters().items():
        assert np.array_equal(array, off.parameters()[name]), name
