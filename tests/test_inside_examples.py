"""`cnndsl show` and `cnndsl report` run on every example (issue 12): with initial weights and
no input everywhere, and on a real Fashion-MNIST test image for the 28x28x1 examples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from cnndsl.cli import main

ALL = sorted(p.name for p in EXAMPLES.glob("*.cnn"))
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' missing")


def takes_fashion_images(name: str) -> bool:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return "input 28x28x1" in text


@pytest.mark.parametrize("name", ALL)
def test_show_without_input_draws_the_filters(name, tmp_path, capsys):
    out = tmp_path / "show"
    assert main(["show", str(EXAMPLES / name), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "initial weights" in captured.err
    pictures = sorted(p.name for p in out.iterdir())
    assert pictures == ["filters.png"]  # every example has a conv layer
    with Image.open(out / "filters.png") as image:
        assert len(np.unique(np.asarray(image.convert("L")))) > 10


@needs_dot
@pytest.mark.parametrize("name", ALL)
def test_report_without_input(name, tmp_path, capsys):
    page = tmp_path / "net.html"
    assert main(["report", str(EXAMPLES / name), "-o", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<svg" in text and "data:image/png;base64," in text
    assert "untrained" in text


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("name", [n for n in ALL if takes_fashion_images(n)])
def test_show_and_report_on_a_fashion_mnist_image(name, tmp_path, capsys):
    out = tmp_path / "show"
    assert main(["show", str(EXAMPLES / name), "--index", "3", "--data", "fashion-mnist",
                 "-o", str(out)]) == 0
    maps = sorted(p.name for p in out.glob("features_*.png"))
    assert maps and "input.png" in {p.name for p in out.iterdir()}
    if shutil.which("dot"):
        page = tmp_path / "net.html"
        assert main(["report", str(EXAMPLES / name), "--index", "3", "--data",
                     "fashion-mnist", "-o", str(page)]) == 0
        images = page.read_text(encoding="utf-8").count("data:image/png;base64,")
        assert images >= 2 + len(maps)  # filters, input and a grid per conv/pool layer
