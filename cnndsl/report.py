"""Evaluation reports: confusion matrix, per-class accuracy, as text and as a PNG."""

from __future__ import annotations

import numpy as np

from cnndsl.source import printable


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """matrix[t, p] = how many examples of class t were predicted as p."""
    size = max(classes, int(predicted.max(initial=0)) + 1)
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def format_evaluation(matrix: np.ndarray, names: list, source: str = "",
                      top5: float | None = None) -> str:
    """The report as text; class names and the source come from files, so their control
    characters (terminal escapes) are shown escaped, \\x1b, never sent to the terminal.
    `top5` (cnndsl.train.evaluate's, with more than 5 classes) is shown under the accuracy."""
    names = [printable(str(n)) for n in names]
    source = printable(str(source))
    total = matrix.sum()
    correct = np.trace(matrix)
    lines = [f"accuracy {correct / total:.4f} ({correct:,} of {total:,} test images"
             + (f" of {source})" if source else ")")]
    if top5 is not None:
        lines.append(f"top-5    {top5:.4f} (the true class among the 5 most probable)")
    lines += ["", "per-class accuracy:"]
    width = max(len(str(n)) for n in names) if names else 5
    for index, name in enumerate(names):
        count = matrix[index].sum()
        accuracy = matrix[index, index] / count if count else float("nan")
        lines.append(f"  {index:2d} {name!s:{width}}  {accuracy:.4f}  ({count:,} images)")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    cell = max(4, len(f"{matrix.max():,}") + 1)
    lines.append("    " + "".join(f"{j:>{cell}}" for j in range(matrix.shape[1])))
    for i, row in enumerate(matrix):
        lines.append(f"{i:>3} " + "".join(f"{v:>{cell},}" for v in row))
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, names: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [printable(str(n)) for n in names] + [str(i) for i in range(len(names), matrix.shape[0])]
    figure, axis = plt.subplots(figsize=(7, 6))
    shown = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="predicted", ylabel="true class", title="confusion matrix")
    threshold = matrix.max() / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axis.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=7,
                      color="white" if matrix[i, j] > threshold else "black")
    figure.colorbar(shown)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
