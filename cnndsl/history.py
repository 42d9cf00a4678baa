"""What a training run measured, epoch by epoch: `Model.fit` returns a `History`.

The rows are the ones `cnndsl train` writes to `W.metrics.csv` / `.json`, and the CSV and
the curves are made by the same functions here (`csv_text`, `curves_figure`), so a run
from Python and one from the command line give the same files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path


class History:
    """One row per finished epoch: `epoch` (from 1), `lr`, `loss`, `accuracy`, `val_loss`
    and `val_accuracy` (when there is validation data), `seconds`, `images_per_s`.

    `history["loss"]` is the column as a list; `history.rows` the rows as dicts;
    `history.history` the columns as a dict of lists (as Keras has it)."""

    def __init__(self, rows: list[dict], stopped_early: bool = False):
        self.rows = [dict(row) for row in rows]
        #: True when a callback (e.g. EarlyStopping) ended the run before its last epoch
        self.stopped_early = stopped_early

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(key for row in self.rows for key in row))

    @property
    def history(self) -> dict[str, list]:
        return {key: self[key] for key in self.columns}

    @property
    def epochs(self) -> list[int]:
        return [row["epoch"] for row in self.rows]

    def __getitem__(self, key: str) -> list:
        if key not in self.columns:
            raise KeyError(f"no '{key}' in this history; it has {', '.join(self.columns)}"
                           + ("" if "val_loss" in self.columns or key[:4] != "val_" else
                              " (no validation data: give validation_split or "
                              "validation_data to fit)"))
        return [row.get(key) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        if not self.rows:
            return "<History: no epochs>"
        last = self.rows[-1]
        shown = ", ".join(f"{key} {last[key]:.4f}" for key in
                          ("loss", "accuracy", "val_loss", "val_accuracy") if key in last)
        early = ", stopped early" if self.stopped_early else ""
        return f"<History: {len(self.rows)} epoch{'s' if len(self.rows) != 1 else ''}" \
               f"{early}; last: {shown}>"

    def to_csv(self, path) -> None:
        """Write the rows as CSV (the columns of `cnndsl train`'s W.metrics.csv), atomically."""
        write_csv(path, self.rows, "the history")

    def plot(self, path=None):
        """The loss and accuracy curves (train and validation) as a matplotlib Figure, as
        `cnndsl train` draws them in W.curves.png; with `path`, also written there as a
        PNG (atomically). A notebook shows the returned figure (once)."""
        if not self.rows:
            raise ValueError("this history has no epochs to plot")
        if path is not None:
            figure = curves_figure(self.rows)
            write_png(figure, path)
            return figure
        import matplotlib.pyplot as plt

        # through pyplot, so that a notebook's inline backend is set up to show figures,
        # then closed, so that it shows this one as the cell's value and not twice
        figure = plt.figure(figsize=FIGURE_SIZE, layout="tight")
        plt.close(figure)
        return curves_figure(self.rows, figure)


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV: a column per key, in the order keys first appear."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_csv(path, rows: list[dict], what: str) -> None:
    from cnndsl.checkpoint import write_atomically

    data = csv_text(rows).encode("utf-8")
    write_atomically(path, lambda handle: handle.write(data), what)


FIGURE_SIZE = (9, 3.4)  # inches


def curves_figure(rows: list[dict], figure=None):
    """Loss (left) and accuracy (right) per epoch, train and validation, drawn into
    `figure`, by default a new matplotlib Figure made without pyplot (no backend chosen or
    changed, nothing left open)."""
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=FIGURE_SIZE, layout="tight")
    left, right = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    validated = [row for row in rows if "val_loss" in row]
    left.plot(epochs, [row["loss"] for row in rows], "o-", label="train")
    right.plot(epochs, [row["accuracy"] for row in rows], "o-", label="train")
    if validated:
        at = [row["epoch"] for row in validated]
        left.plot(at, [row["val_loss"] for row in validated], "o-", label="validation")
        right.plot(at, [row["val_accuracy"] for row in validated], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole
    return figure


def write_png(figure, path) -> None:
    """`figure` as a PNG at `path`, atomically (a full disk leaves the previous file)."""
    from cnndsl.checkpoint import write_atomically

    write_atomically(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=110),
                     "curves")
