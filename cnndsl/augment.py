"""Data augmentation: random changes to each training batch, drawn afresh every step.

    train { shift = 2, flip = true, rotate = 10, scale = 0.1, shear = 5,
            elastic = 34, elastic_sigma = 4, fill = zero }

Only the training batches are changed (cnndsl.train.Trainer calls `augment_batch` on the
batch it steps on); validation and test images are never touched. The random draws come
from `batch_rng(seed, epoch, step)`, so the same seed gives the same augmented batches,
and a run resumed mid-epoch (`cnndsl train --resume`) continues with the batches it would
have seen.

Images are x: N×H×W×C (channels last, as the DSL declares them); 1-D inputs are N×L×C and
3-D ones N×D×H×W×C. What each setting does, in this order:

- `flip = true`: mirror half of the images (drawn per image) left to right, along the last
  spatial axis (W; L for 1-D). Meaningful for Fashion-MNIST or CIFAR, not for digits.
- `shift = N`: move each image by a whole number of pixels drawn uniformly in [-N, N],
  independently along every spatial axis (the "pad by N and take a random crop" of the
  CIFAR papers). What enters from outside is `fill`.
- 2-D only: one resampling (bilinear) through a random affine map about the image's
  centre and an elastic displacement field:
  `rotate = D` (an angle drawn in [-D, D] degrees, counter-clockwise as the image is
  shown), `scale = S` (a zoom factor drawn in [1 - S, 1 + S]), `shear = D` (a horizontal
  shear angle drawn in [-D, D] degrees), `elastic = ALPHA` with `elastic_sigma = SIGMA`
  (Simard, Steinkraus & Platt 2003: a displacement field of uniform noise in [-1, 1] per
  pixel and axis, smoothed by a Gaussian of SIGMA pixels, times ALPHA; their MNIST
  figures use 34 and 4).
- `fill = zero` (default: a black border, as the datasets' backgrounds are 0 and as the
  papers pad) or `edge` (the nearest border pixel repeated).
"""

from __future__ import annotations

import math

import numpy as np

#: the augmentation settings of TrainConfig (cnndsl.trainconfig) and their "off" values
OFF = {"shift": 0, "flip": False, "rotate": 0.0, "scale": 0.0, "shear": 0.0,
       "elastic": 0.0}
#: every setting that belongs to augmentation (the ones above plus their options)
SETTINGS = (*OFF, "elastic_sigma", "fill")
#: settings that only 2-D images (H×W×C) take
PLANAR = ("rotate", "scale", "shear", "elastic")
FILLS = ("zero", "edge")
#: hints for a bad value of a setting
HINTS = {"shift": "a few pixels: e.g. shift = 2 (the CIFAR papers pad 32x32 images by 4)",
         "rotate": "small angles keep an image's class: e.g. rotate = 10",
         "scale": "e.g. scale = 0.1 zooms by a factor between 0.9 and 1.1",
         "shear": "e.g. shear = 10",
         "elastic": "Simard et al.'s MNIST values: elastic = 34, elastic_sigma = 4",
         "elastic_sigma": "Simard et al.'s MNIST values: elastic = 34, elastic_sigma = 4"}
#: the last entropy word of an augmentation seed, so that its draws never coincide with
#: the epoch shuffle's (seed, epoch) or a split's
_STREAM = 0x61756720  # "aug "


def active(settings) -> bool:
    """Whether `settings` (a TrainConfig, or a dict with some of its names) change images."""
    return any(_get(settings, name) != off for name, off in OFF.items())


def describe(settings) -> str:
    """The augmentation in words for the run's header line ("shift 2, flip"), "" if none."""
    parts = []
    for name, off in OFF.items():
        value = _get(settings, name)
        if value == off:
            continue
        if name == "flip":
            parts.append("flip")
        elif name == "elastic":
            parts.append(f"elastic {value:g} sigma {_get(settings, 'elastic_sigma'):g}")
        else:
            parts.append(f"{name} {value:g}")
    if parts and _get(settings, "fill") != "zero":
        parts.append(f"{_get(settings, 'fill')} fill")
    return ", ".join(parts)


def unsupported(settings, input_shape) -> tuple[str, str, str] | None:
    """(setting, why, hint) for the first augmentation setting a network whose one example
    is `input_shape` (spatial axes then channels) cannot take, else None."""
    spatial = tuple(input_shape)[:-1]
    shown = "x".join(map(str, input_shape))
    for name in PLANAR:
        if _get(settings, name) != OFF[name] and len(spatial) != 2:
            why = (f"{name} works on 2-D images (H x W x C); this network's input {shown} "
                   f"is {len(spatial)}-D")
            return name, why, ("shift and flip work on 1-D, 2-D and 3-D inputs; rotate, "
                               "scale, shear and elastic on 2-D ones only")
    shift = _get(settings, "shift")
    if spatial and shift >= min(spatial):
        return "shift", (f"shift {shift} would move a {shown} input out of view (at most "
                         f"{min(spatial) - 1} pixels)"), HINTS["shift"]
    return None


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one training batch's augmentation: a function of (seed, epoch,
    step) only, so a resumed run draws what the uninterrupted one drew."""
    return np.random.default_rng([seed, epoch, step, _STREAM])


def augment_batch(x: np.ndarray, settings, rng: np.random.Generator) -> np.ndarray:
    """The batch x (N×*spatial×C) with random flips, shifts and (2-D) warps drawn from
    `rng` as `settings` (a TrainConfig or a dict of its names) say: a new array (x itself
    when nothing is on); x is never changed. The flips are drawn whether `flip` is on or
    not, so turning it on or off leaves the shifts and warps as they were."""
    count, spatial = len(x), x.shape[1:-1]
    fill = _get(settings, "fill")
    mirrored = rng.random(count) < 0.5
    offsets = rng.integers(-_get(settings, "shift"), _get(settings, "shift") + 1,
                           size=(count, len(spatial)))
    if _get(settings, "flip"):
        x = flip(x, mirrored)
    if _get(settings, "shift"):
        x = shift(x, offsets, fill)
    if any(_get(settings, name) != OFF[name] for name in PLANAR):
        matrices = random_affine(rng, count, _get(settings, "rotate"),
                                 _get(settings, "scale"), _get(settings, "shear"))
        displacement = elastic_displacement(rng, count, spatial,
                                            _get(settings, "elastic"),
                                            _get(settings, "elastic_sigma"))
        x = warp(x, matrices, displacement, fill)
    return x


# ---- the transforms, deterministic given their parameters --------------------------------

def flip(x: np.ndarray, which: np.ndarray) -> np.ndarray:
    """x (N×*spatial×C) with the images where `which` (N bools) is set mirrored along the
    last spatial axis (left to right)."""
    out = x.copy()
    out[which] = x[which][..., ::-1, :]
    return out


def shift(x: np.ndarray, offsets: np.ndarray, fill: str = "zero") -> np.ndarray:
    """x (N×*spatial×C) with image n moved by offsets[n] (N×len(spatial) whole pixels, one
    per spatial axis; positive moves towards higher indices: down, right). What enters is
    0 (`fill="zero"`) or the nearest border pixel (`"edge"`)."""
    out, count = x, len(x)
    for axis, size in enumerate(x.shape[1:-1]):
        source = np.arange(size)[None, :] - offsets[:, axis:axis + 1]  # N×size
        inside = (source >= 0) & (source < size)
        index = np.clip(source, 0, size - 1)
        shape = [count] + [1] * (x.ndim - 1)
        shape[axis + 1] = size
        out = np.take_along_axis(out, index.reshape(shape), axis=axis + 1)
        if fill == "zero":
            out = out * inside.reshape(shape).astype(x.dtype)
    return out


def affine_matrix(rotate: float = 0.0, zoom: float = 1.0, shear: float = 0.0) -> np.ndarray:
    """The 2×2 map (rows, columns about the centre) that draws an image rotated by `rotate`
    degrees counter-clockwise as shown, zoomed by `zoom` and sheared horizontally by
    `shear` degrees: the forward map, output offset = M @ input offset."""
    theta, phi = math.radians(rotate), math.radians(shear)
    # (row, col) with rows pointing down: a counter-clockwise turn on screen
    turn = np.array([[math.cos(theta), -math.sin(theta)],
                     [math.sin(theta), math.cos(theta)]])
    slant = np.array([[1.0, 0.0], [math.tan(phi), 1.0]])  # col += tan(phi) * row
    return turn @ slant * zoom


def random_affine(rng: np.random.Generator, count: int, rotate: float, scale: float,
                  shear: float) -> np.ndarray:
    """count forward maps (count×2×2) with angles in [-rotate, rotate], zooms in
    [1 - scale, 1 + scale] and shear angles in [-shear, shear] degrees."""
    angles = rng.uniform(-rotate, rotate, count)
    zooms = rng.uniform(1 - scale, 1 + scale, count)
    slants = rng.uniform(-shear, shear, count)
    return np.stack([affine_matrix(a, z, s) for a, z, s in zip(angles, zooms, slants)])


def elastic_displacement(rng: np.random.Generator, count: int, spatial: tuple,
                         alpha: float, sigma: float) -> np.ndarray:
    """Simard et al.'s displacement fields, count×H×W×2 (row, column offsets in pixels):
    uniform noise in [-1, 1], smoothed by a Gaussian of `sigma` pixels (zero beyond the
    border, as the common scipy.ndimage.gaussian_filter(mode="constant") recipe), times
    `alpha`. The noise is drawn even when alpha is 0, so the draws after it stay put."""
    height, width = spatial
    noise = rng.uniform(-1.0, 1.0, size=(count, 2, height, width)).astype(np.float32)
    if alpha == 0:
        return np.zeros((count, height, width, 2), np.float32)
    rows, cols = gaussian_matrix(height, sigma), gaussian_matrix(width, sigma)
    smooth = rows @ noise @ cols.T  # separable: along the rows, then along the columns
    return (alpha * smooth).transpose(0, 2, 3, 1)


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """size×size float32 G with G @ v = v smoothed by a Gaussian of `sigma` (truncated at 4
    sigma as scipy.ndimage's, values beyond the ends taken as 0)."""
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    distance = np.arange(size)[None, :] - np.arange(size)[:, None]
    inside = np.abs(distance) <= radius
    return np.where(inside, taps[np.clip(distance + radius, 0, 2 * radius)], 0).astype(
        np.float32)


def warp(x: np.ndarray, matrices: np.ndarray, displacement: np.ndarray | None = None,
         fill: str = "zero") -> np.ndarray:
    """x (N×H×W×C) resampled (bilinear) as image n drawn through the forward map
    matrices[n] (2×2, about the image's centre), then displaced: output pixel p shows the
    input at M⁻¹(p - centre) + centre + displacement[n, p] (N×H×W×2 row, column offsets;
    None: none). Outside the image is 0 (`fill="zero"`: pixels beyond the border count as
    0 in the interpolation) or the nearest border pixel (`"edge"`)."""
    count, height, width, _ = x.shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1)
    offsets = (grid - centre).reshape(-1, 2)  # (H*W)×2
    inverse = np.linalg.inv(matrices)  # N×2×2: from output offsets back to the input
    source = (offsets @ inverse.transpose(0, 2, 1)).reshape(count, height, width, 2)
    source = source + centre
    if displacement is not None:
        source = source + displacement
    return bilinear(x, source[..., 0], source[..., 1], fill)


def bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, fill: str) -> np.ndarray:
    """x (N×H×W×C) sampled at (rows, cols) (N×H'×W' fractional pixel positions): the
    weighted four nearest pixels, those outside the image 0 (`fill="zero"`) or, with
    `"edge"`, the positions clamped into the image first."""
    count, height, width, channels = x.shape
    if fill == "edge":
        rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
    # a one-pixel frame (0, or the border repeated) takes every neighbour outside the image
    framed = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                    mode="constant" if fill == "zero" else "edge").reshape(-1, channels)
    top = np.clip(np.floor(rows), -1, height - 1)
    left = np.clip(np.floor(cols), -1, width - 1)
    down = np.clip(rows - top, 0, 1).astype(x.dtype)[..., None]  # weights of the +1 pixels
    right = np.clip(cols - left, 0, 1).astype(x.dtype)[..., None]
    first = ((np.arange(count)[:, None, None] * (height + 2) + top.astype(np.int64) + 1)
             * (width + 2) + left.astype(np.int64) + 1)  # index of (top, left) in framed

    def pixel(offset: int) -> np.ndarray:
        return framed.take(first + offset, axis=0)

    below = width + 2
    out = ((1 - down) * ((1 - right) * pixel(0) + right * pixel(1))
           + down * ((1 - right) * pixel(below) + right * pixel(below + 1)))
    return out.astype(x.dtype, copy=False)


def _get(settings, name: str):
    if isinstance(settings, dict):
        return settings.get(name, _DEFAULTS[name])
    return getattr(settings, name)


_DEFAULTS = {**OFF, "elastic_sigma": 4.0, "fill": "zero"}
