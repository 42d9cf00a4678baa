"""examples/quickstart.ipynb runs headless (nbclient, a real IPython kernel) and shows what it
promises: the summary table, the inline diagram, the training curves, the evaluation, the
feature maps and the saved weights loading back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLES

FASHION = Path("/usr/share/datasets/fashion-mnist")


def outputs(cell) -> list[dict]:
    return [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_quickstart_notebook_runs_and_shows_its_outputs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook_path = tmp_path / "quickstart.ipynb"
    shutil.copy(EXAMPLES / "quickstart.ipynb", notebook_path)
    notebook = nbformat.read(notebook_path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    by_source = {cell.source.split("\n")[0]: cell for cell in code}
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors

    summary = outputs(by_source["model.summary()"])[0]["data"]["text/plain"]
    assert summary.startswith("network Quick: input 28x28x1 -> output 10")
    assert "total params: 53,370" in summary and "depth:" in summary

    shown = outputs(by_source["model"])[0]["data"]
    assert "<svg" in shown["image/svg+xml"] and "conv1" in shown["image/svg+xml"]
    assert "<svg" in shown["text/html"] and "receptive field" in shown["text/html"]

    fit = next(cell for cell in code if "model.fit(" in cell.source)
    assert "History: 3 epochs" in outputs(fit)[-1]["data"]["text/plain"]
    assert "image/png" in outputs(by_source["history.plot()"])[0]["data"]

    evaluated = next(cell for cell in code if "model.evaluate(" in cell.source)
    printed = "".join(o.get("text", "") for o in evaluated.outputs if o.output_type == "stream")
    assert printed.startswith("accuracy 0.")
    features = next(cell for cell in code if "model.features(" in cell.source)
    assert any("image/png" in o["data"] for o in outputs(features))
    reloaded = next(cell for cell in code if "model.save(" in cell.source)
    assert outputs(reloaded)[0]["data"]["text/plain"] == "True"
    assert (tmp_path / "quick.npz").is_file()
