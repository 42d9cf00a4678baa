"""Datasets from Python, as `cnndsl train --data` reads them (cnndsl.data):

    data = cnndsl.datasets.load("fashion-mnist")          # or "mnist", a folder, an .npz
    data.x_train, data.y_train, data.x_test, data.y_test  # N×H×W×C float32 in [0, 1], N int64
    data.classes                                           # class names
    model.fit(data, epochs=3)                              # trains on the train split

`limit=N` takes the seeded random N training and N test images `--limit N` takes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cnndsl import data as _data


@dataclass
class Dataset(_data.Dataset):
    """A `cnndsl.data.Dataset` that remembers how it was asked for: `spec` (what `--data`
    takes) and `limit`, so a checkpoint saved by `fit` names its data and `cnndsl train
    --resume` can load them again."""

    spec: str = ""
    limit: int | None = None


def load(spec: str | os.PathLike = "fashion-mnist", limit: int | None = None,
         seed: int = 0) -> Dataset:
    """The dataset `spec` names: `fashion-mnist`, `mnist`, a folder of IDX files or of one
    folder of images per class, or an `.npz` file (docs/language.md §10). `limit` keeps a
    seeded random `limit` of the training images and of the test images (`seed` for the
    training ones, seed + 1 for the test ones, as `cnndsl train --limit --seed`); 0 or
    None keeps all. A dataset that cannot be read raises cnndsl.data.DataError."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ValueError(f"limit must be 0 (all) or a number of images, got {limit!r}")
    loaded = _data.load_dataset(spec)
    x_train, y_train, x_test, y_test = limited(loaded.x_train, loaded.y_train, loaded.x_test,
                                               loaded.y_test, limit, seed)
    return Dataset(x_train, y_train, x_test, y_test, loaded.classes, loaded.source,
                   loaded.name, loaded.notes, spec=os.fspath(spec), limit=limit or None)


def limited(x_train, y_train, x_test, y_test, limit: int | None, seed: int) -> tuple:
    """(x_train, y_train, x_test, y_test) cut to a seeded random `limit` each (`limit`
    None or 0: all): the training images drawn with `seed`, the test images with seed + 1.
    The one `--limit` rule of `load(limit=)`, `cnndsl train` and `cnndsl sweep`."""
    x_train, y_train = seeded_subset(x_train, y_train, limit, seed)
    x_test, y_test = seeded_subset(x_test, y_test, limit, seed + 1)
    return x_train, y_train, x_test, y_test


def seeded_subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int):
    """A seeded random `limit` of the examples (all when there are fewer, or no limit), in
    their order."""
    if not limit or limit >= len(x):
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[keep], y[keep]
