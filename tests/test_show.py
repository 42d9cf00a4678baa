"""`cnndsl show` (cnndsl/commands/show.py) and its pictures (cnndsl/show.py): the PNGs are
written, valid and not blank, one feature-map picture per conv/pool layer, maximising
inputs raise their unit, and mistakes exit 1 with nothing written."""

import numpy as np
import pytest
from PIL import Image

import cnndsl
from cnndsl import show
from cnndsl.cli import main
from cnndsl.model import Model

NET = """network Tiny
input 12x12x1
Conv(4, 3) -> ReLU -> MaxPool(2) -> c2: Conv(6, 3) -> ReLU -> GlobalAvgPool -> FC(3)
  -> Softmax
"""
# the conv and pool layers with spatial output (GlobalAvgPool's is flat)
NET_PICTURES = ["features_01_conv1.png", "features_02_maxpool1.png", "features_03_c2.png"]
NET_1D = "input 40x2\nConv(4, 5) -> ReLU -> MaxPool(2) -> Conv(3, 3) -> GlobalMaxPool -> FC(2)"
NET_3D = "input 6x6x6x1\nConv(3, 3) -> ReLU -> MaxPool(2) -> FC(2)"


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(NET)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def pixels(path) -> np.ndarray:
    """The PNG as RGB pixels, after Pillow checked the file."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def tile_colours(path, kind: str) -> set:
    """Distinct colours of the pictures' own pixels in the tile area (left of any
    colourbar, below the title): for "signed" maps the reds and blues, for "grey" tiles
    the greys (not white), for "colour" the saturated ones. Gaps, labels and white
    backgrounds are none of these, so a blank picture has at most one."""
    rgb = pixels(path)
    h, w = rgb.shape[:2]
    box = rgb[int(0.15 * h):int(0.95 * h), int(0.02 * w):int(0.7 * w)].reshape(-1, 3)
    r, g, b = box.T
    if kind == "signed":
        keep = np.abs(r - b) > 40
    elif kind == "grey":
        keep = (r == g) & (g == b) & (r < 250)
    else:
        keep = box.max(axis=1) - box.min(axis=1) > 60
    return {tuple(c) for c in box[keep]}


def not_blank(path, kind: str) -> bool:
    return len(tile_colours(path, kind)) > 1


def write_image(path, size=(12, 12)):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random(size) * 255).astype(np.uint8), "L").save(path)
    return path


def tiny_dataset(path, shape=(12, 12, 1), n=60):
    """An .npz dataset of `n` training and test examples: a bright square, its class the
    quadrant it is in."""
    rng = np.random.default_rng(1)
    x = rng.random((2 * n, *shape), dtype=np.float32) * 0.2
    y = rng.integers(0, 3, 2 * n)
    for i, label in enumerate(y):
        top, left = (label % 2) * 6, (label // 2) * 6
        x[i, top:top + 5, left:left + 5] = 1.0
    np.savez(path, x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:])
    return path


def test_an_image_gives_filters_input_and_a_picture_per_conv_and_pool_layer(
        net, tmp_path, capsys):
    out_dir = tmp_path / "pictures"
    code, out, err = run(capsys, "show", net, write_image(tmp_path / "in.png"), "-o", out_dir)
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["filters.png", "input.png", *NET_PICTURES])
    for name in names:
        assert f"wrote {out_dir / name}" in out
    assert "no --weights" in err and "untrained" in err
    assert not_blank(out_dir / "filters.png", "grey")
    assert not_blank(out_dir / "input.png", "grey")
    for name in NET_PICTURES:
        assert not_blank(out_dir / name, "signed"), name


def test_without_an_input_only_the_filters_and_a_note(net, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "show", net)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "tiny_show").iterdir()] == ["filters.png"]
    assert "feature maps need an input" in err and "--index N --data D" in err


def test_a_test_example_of_a_dataset(net, tmp_path, capsys):
    data = tiny_dataset(tmp_path / "squares.npz")
    code, _, err = run(capsys, "show", net, "--index", 2, "--data", data, "-o",
                         tmp_path / "o")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        ["filters.png", "input.png", *NET_PICTURES])
    # the picture is that example: its bright square shows as white pixels
    assert (pixels(tmp_path / "o" / "input.png") == 255).all(axis=2).any()


def test_maximize_raises_its_unit_above_the_start():
    model = Model(cnndsl.check_text(NET), seed=1)
    for layer, channel in (("c2", 1), ("maxpool1", 2), ("fc1", 0)):
        start = show.maximize(model, layer, channel, steps=0)
        best = show.maximize(model, layer, channel, steps=24)
        assert best.shape == model.input_shape
        before = model.features(start[None], [layer])[layer][0][..., channel].mean()
        after = model.features(best[None], [layer])[layer][0][..., channel].mean()
        # a clear rise, for a unit of any scale
        assert after - before > 0.25 * max(abs(before), abs(after)), (layer, before, after)
        assert after == pytest.approx(show.unit_activation(model, layer, channel, best))


def test_maximize_picture_from_the_command_line(net, tmp_path, capsys):
    code, out, err = run(capsys, "show", net, "--maximize", "c2:4", "--steps", 12, "-o",
                         tmp_path / "o")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["filters.png",
                                                                  "maximize_c2_4.png"]
    assert not_blank(tmp_path / "o" / "maximize_c2_4.png", "grey")
    assert "maximize c2:4: mean activation" in out


@pytest.mark.parametrize("argv, message", [
    (["--maximize", "c3"], "no layer 'c3'"),
    (["--maximize", "c2:6"], "has 6 channels, 0..5"),
    (["--maximize", "fc1:3"], "has 3 units, 0..2"),
    (["BAD_IMAGE"], "not an image"),
    (["WRONG_NPY"], "shape 5x5, but Tiny's input is 12x12x1"),
    (["--index", 500, "--data", "DATA"], "60 test examples, 0..59"),
])
def test_mistakes_exit_1_and_write_nothing(net, tmp_path, capsys, argv, message):
    (tmp_path / "bad.png").write_text("not a picture")
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    data = tiny_dataset(tmp_path / "squares.npz")
    files = {"BAD_IMAGE": tmp_path / "bad.png", "WRONG_NPY": tmp_path / "wrong.npy",
             "DATA": data}
    argv = [files.get(a, a) for a in argv]
    code, out, err = run(capsys, "show", net, *argv, "-o", tmp_path / "o")
    assert code == 1
    assert message in err and "error:" in err
    assert not (tmp_path / "o").exists() and out == ""


def test_an_unknown_layer_names_the_file_and_suggests(net, tmp_path, capsys):
    code, _, err = run(capsys, "show", net, "--maximize", "conv3:0", "-o", tmp_path / "o")
    assert code == 1
    assert err.startswith(f"{net}: error: Tiny has no layer 'conv3'")
    assert "did you mean 'conv1'" in err


@pytest.mark.parametrize("argv", [["IMAGE", "--index", 0], ["--maximize", "c2:x"],
                                  ["--steps", 3]])
def test_usage_errors_exit_2(net, tmp_path, capsys, argv):
    argv = [write_image(tmp_path / "in.png") if a == "IMAGE" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(["show", str(net), *map(str, argv), "-o", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, shape, pictures", [
    (NET_1D, (40, 2), ["features_01_conv1.png", "features_02_maxpool1.png",
                       "features_03_conv2.png"]),
    (NET_3D, (6, 6, 6, 1), ["features_01_conv1.png", "features_02_maxpool1.png"]),
], ids=["1d", "3d"])
def test_one_and_three_dimensional_networks(tmp_path, capsys, text, shape, pictures):
    net = tmp_path / "net.cnn"
    net.write_text(text)
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(capsys, "show", net, tmp_path / "x.npy", "--maximize", "conv1:1",
                         "--steps", 8, "-o", tmp_path / "o")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted(["filters.png", "input.png", "maximize_conv1_1.png", *pictures])
    kind = "signed" if len(shape) == 2 else "grey"  # 1-D: blue line plots
    for name in ("filters.png", "input.png", "maximize_conv1_1.png"):
        assert not_blank(tmp_path / "o" / name, kind), name
    for name in pictures:
        assert not_blank(tmp_path / "o" / name, "signed"), name


def test_trained_weights_are_shown_without_the_note(net, tmp_path, capsys):
    data = tiny_dataset(tmp_path / "squares.npz")
    weights = tmp_path / "w.npz"
    code, _, err = run(capsys, "train", net, "--data", data, "--epochs", 2, "--batch", 16,
                       "--lr", 0.01, "--no-progress", "-o", weights)
    assert code == 0, err
    code, _, err = run(capsys, "show", net, "--weights", weights, "--index", 0, "-o",
                         tmp_path / "trained")  # --data: the one the weights name
    assert code == 0, err
    assert "untrained" not in err
    assert (tmp_path / "trained" / "features_03_c2.png").exists()
    code, _, _ = run(capsys, "show", net, "-o", tmp_path / "initial")
    trained = pixels(tmp_path / "trained" / "filters.png")
    initial = pixels(tmp_path / "initial" / "filters.png")
    assert trained.shape != initial.shape or (trained != initial).any()
    assert not_blank(tmp_path / "trained" / "filters.png", "grey")


def test_rgb_filters_and_a_network_without_conv_layers(tmp_path, capsys):
    model = Model(cnndsl.check_text("input 8x8x3\nConv(5, 3) -> MaxPool(2) -> FC(2)"))
    path = tmp_path / "rgb.png"
    path.write_bytes(show.filter_grid_png(model))
    assert len(tile_colours(path, "colour")) > 4  # five random RGB filters
    flat = tmp_path / "mlp.cnn"
    flat.write_text("input 16\nFC(4) -> ReLU -> FC(2)")
    assert show.filter_grid_png(Model(cnndsl.check_text(flat.read_text()))) is None
    code, out, err = run(capsys, "show", flat, "-o", tmp_path / "o")
    assert code == 0 and "no conv layer" in err and out == ""


def test_library_feature_maps_are_per_conv_and_pool_layer():
    model = Model(cnndsl.check_text(NET))
    x = np.random.default_rng(3).random((1, 12, 12, 1), dtype=np.float32)
    maps = show.feature_map_pngs(model, x)
    assert [(name, shape) for name, shape, _ in maps] == [
        ("conv1", (12, 12, 4)), ("maxpool1", (6, 6, 4)), ("c2", (6, 6, 6))]
    assert all(png.startswith(b"\x89PNG") for _, _, png in maps)
    assert show.input_png(model, x).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one input of shape"):
        show.feature_map_pngs(model, np.zeros((2, 12, 12, 1), np.float32))
