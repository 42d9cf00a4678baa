"""Training settings: defaults, the file's optional `train { ... }` block, then flags.

    train { optimizer = sgd, lr = 0.05, momentum = 0.9, epochs = 10, batch = 128 }

Values are numbers, `true`/`false`, or words (`sgd`, `cosine`); `let` names may be used.
An unknown setting or a bad value is reported at its place in the file. The augmentation
settings (`shift`, `flip`, `rotate`, `scale`, `shear`, `elastic`, `elastic_sigma`, `fill`)
are cnndsl.augment's; one the file's `input` cannot take (a rotation of a 1-D signal) is
refused at the setting too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from cnndsl import ast
from cnndsl.errors import CnnDslError, GraphError, did_you_mean
from cnndsl.evaluate import Env, evaluate, show
from cnndsl.ops.args import MAX_WHOLE

CHOICES = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("none", "step", "cosine"),
           "fill": ("zero", "edge")}
#: upper limits of the augmentation settings (cnndsl.augment): (limit, inclusive, meaning)
LIMITS = {"rotate": (180.0, True, "degrees either way"),
          "scale": (1.0, False, "a zoom factor drawn in [1 - scale, 1 + scale]"),
          "shear": (60.0, True, "degrees either way")}


@dataclass
class TrainConfig:
    optimizer: str = "adam"        # sgd | adam | adamw
    lr: float | None = None        # None: 0.001 for adam/adamw, 0.01 for sgd
    momentum: float = 0.9          # sgd only
    nesterov: bool = False         # sgd only
    weight_decay: float = 0.0
    batch: int = 64
    epochs: int = 5
    schedule: str = "none"         # none | step | cosine (per epoch)
    step_size: int = 2             # step schedule: multiply lr by gamma every step_size epochs
    gamma: float = 0.1
    seed: int = 0
    val: float = 0.1               # fraction of the training images held out for validation
    # data augmentation of the training batches (cnndsl.augment): all off by default
    shift: int = 0                 # pixels, drawn in [-shift, shift] per spatial axis
    flip: bool = False             # mirror half the images left to right
    rotate: float = 0.0            # degrees, drawn in [-rotate, rotate] (2-D)
    scale: float = 0.0             # zoom drawn in [1 - scale, 1 + scale] (2-D)
    shear: float = 0.0             # degrees, drawn in [-shear, shear] (2-D)
    elastic: float = 0.0           # Simard et al.'s alpha, pixels (2-D)
    elastic_sigma: float = 4.0     # their sigma: smoothness of the field, pixels
    fill: str = "zero"             # zero | edge: what enters from outside the image

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.optimizer == "sgd" else 0.001

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> TrainConfig:
        """The settings saved by `as_dict` (names it does not know are left out)."""
        return cls(**{k: v for k, v in settings.items() if k in cls.__dataclass_fields__})


KINDS = {f.name: f.type for f in fields(TrainConfig)}


class SettingError(CnnDslError, ValueError):
    """A bad training setting given from Python (`Model.fit(lr=-1)`): a CnnDslError, and a
    ValueError as Python code expects of a bad argument."""


def configured(file_settings: dict, given: dict, names: dict | None = None) -> TrainConfig:
    """The defaults, overridden by the file's `train { }` settings (checked already), then
    by `given` (None: not given), each checked by `convert`. `names` maps a setting to the
    name the caller knows it by (`val` -> `validation_split`), for the error."""
    config = TrainConfig()
    for name, value in file_settings.items():
        setattr(config, name, value)
    for name, value in given.items():
        if value is None:
            continue
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()  # a NumPy scalar: np.int64(64) is a whole number
        try:
            setattr(config, name, convert(name, value))
        except ValueError as error:
            shown = (names or {}).get(name, name)
            message = str(error)
            if message.startswith(f"{name} "):
                message = f"{shown} {message[len(name) + 1:]}"
            raise SettingError(message) from None
    return config


def from_program(program: ast.Program, bindings: dict | None = None) -> TrainConfig:
    """The defaults overridden by the file's `train { ... }` block (if any)."""
    config = TrainConfig()
    for name, value in program_settings(program, bindings).items():
        setattr(config, name, value)
    return config


def program_settings(program: ast.Program, bindings: dict | None = None,
                     data: dict | None = None) -> dict:
    """The settings the file's `train { ... }` block gives (checked), by name; `bindings`
    and `data` as cnndsl.frontend.check_text takes them."""
    blocks = [s for s in program.statements if isinstance(s, ast.TrainStmt)]
    if len(blocks) > 1:
        raise GraphError("a second 'train' block", blocks[1].span).with_note(
            "the first one is here", blocks[0].span)
    if not blocks:
        return {}
    env = Env(_let_values(program, bindings or {}, data or {}))
    settings: dict[str, object] = {}
    for setting in blocks[0].settings:
        if setting.name not in KINDS:
            raise CnnDslError(f"unknown training setting '{setting.name}'", setting.span,
                              hint=did_you_mean(setting.name, KINDS) or
                              f"settings: {', '.join(KINDS)}")
        if setting.name in settings:
            raise CnnDslError(f"'{setting.name}' is set twice", setting.span)
        value = _value(setting, env)
        try:
            settings[setting.name] = convert(setting.name, value)
        except ValueError as error:
            raise CnnDslError(str(error), setting.value.span,
                              hint=getattr(error, "hint", None)) from None
    _check_augmentation(program, blocks[0], settings, env)
    return settings


def _check_augmentation(program: ast.Program, block: ast.TrainStmt, settings: dict,
                        env: Env) -> None:
    """Refuse, at the setting, augmentation the file's input cannot take (rotation of a
    1-D signal, a shift as wide as the image)."""
    from cnndsl import augment

    shape = _input_shape(program, env)
    if shape is None:
        return
    problem = augment.unsupported({**TrainConfig().as_dict(), **settings}, shape)
    if problem is not None:
        name, message, hint = problem
        span = next(s.span for s in block.settings if s.name == name)
        raise CnnDslError(message, span, hint=hint)


def _input_shape(program: ast.Program, env: Env) -> tuple | None:
    """The `input` statement's shape (None if there is none; build_ir checks it)."""
    for statement in program.statements:
        if isinstance(statement, ast.InputStmt):
            value = evaluate(statement.shape, env)
            return value if isinstance(value, tuple) else (value,)
    return None


class BadValue(ValueError):
    """A setting's bad value: the message, and a hint (None: none)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def convert(name: str, value):
    """Check one setting's value (from the file or a flag); ValueError says why (a
    BadValue with a `hint` where one helps)."""
    kind = KINDS[name]
    if name in CHOICES:
        if value not in CHOICES[name]:
            close = did_you_mean(str(value), CHOICES[name]) if isinstance(value, str) else None
            raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, got "
                             f"{show(value)}" + (f"; {close}" if close else ""))
        return value
    if "bool" in kind:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {show(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {show(value)}")  # noqa: TRY004
    if kind == "int":
        least = 0 if name in ("seed", "shift") else 1
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {show(value)}")
        if value > MAX_WHOLE:
            raise ValueError(f"{name} must be at most 2^31 ({MAX_WHOLE:,}), got {value:,}")
        return value
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if name == "val" and not 0 <= value < 1:
        raise ValueError(f"val must be a fraction in [0, 1), got {show(value)}")
    if value < 0 or (name in ("lr", "elastic_sigma") and value == 0):
        raise ValueError(f"{name} must be positive, got {show(value)}")
    if name in LIMITS:
        limit, included, meaning = LIMITS[name]
        if value > limit or (value == limit and not included):
            bound = f"at most {limit:g}" if included else f"below {limit:g}"
            raise BadValue(f"{name} must be {bound} ({meaning}), got {show(value)}",
                           hint=augment_hint(name))
    return float(value)


def augment_hint(name: str) -> str | None:
    from cnndsl.augment import HINTS

    return HINTS.get(name)


def _value(setting: ast.Setting, env: Env):
    if isinstance(setting.value, ast.Name) and setting.value.id not in env.values and \
            setting.value.id not in ("true", "false"):
        return setting.value.id  # a word such as sgd or cosine
    return evaluate(setting.value, env)


def _let_values(program: ast.Program, bindings: dict, data: dict) -> dict:
    values = {**data, **bindings}  # a `let` replaces a data binding, not an override
    for statement in program.statements:
        if isinstance(statement, ast.LetStmt):
            for binding in statement.bindings:
                if binding.name not in bindings:
                    values[binding.name] = evaluate(binding.value, Env(values))
    return values
