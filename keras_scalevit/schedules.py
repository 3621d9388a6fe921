"""big_vision's learning-rate schedules as serializable Keras schedules.

`create_learning_rate_schedule` takes big_vision's keywords (``decay_type``,
``warmup_steps``/``_epochs``/``_examples``/``_percent``, ``cooldown_*``, ``timescale``,
``shift``, ``power``, ``linear_end``/``end``, ``steps``/``mults``, ...) and resolves every
duration to a step count once, in Python. The result is a `BigVisionSchedule`, a
`keras.optimizers.schedules.LearningRateSchedule` whose config holds only resolved
numbers, so it serializes with `keras.saving` and reloads to the same values.

The value at an integer step is computed in float32 with the operations in the
order big_vision uses, constants combined in double precision where big_vision
combines them in Python; it matches big_vision's fixtures to float32 round-off.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_scalevit.utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_kwargs,
    check_non_negative_float,
    check_positive_int,
)

DECAY_TYPES = ("linear", "polynomial", "cosine", "rsqrt", "stair")

_DURATION_SUFFIXES = ("steps", "examples", "epochs", "percent")
_DURATION_PREFIXES = ("warmup", "cooldown", "timescale", "shift")
_PLAIN_KEYWORDS = ("timescale", "shift", "power", "end", "linear_end", "steps", "mults")
_KNOWN_KEYWORDS = frozenset(
    [f"{p}_{s}" for p in _DURATION_PREFIXES for s in _DURATION_SUFFIXES]
    + list(_PLAIN_KEYWORDS)
)


def _check_number(name, value, *, allow_none=False):
    # Validates without converting: an int stays an int (the rsqrt schedule adds
    # integer offsets exactly, as big_vision does in int32).
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")


def _check_decay_type(decay_type):
    try:
        return check_choice("decay_type", decay_type, DECAY_TYPES)
    except ValueError as e:
        raise ValueError(
            f"{str(e)[:-1]} (allowed values: `keras_scalevit.schedules.DECAY_TYPES`)."
        ) from None


def duration_to_steps(
    prefix, kwargs, *, data_size=None, batch_size=None, total_steps=None, default=0
):
    """Converts a big_vision duration (``{prefix}_steps/_examples/_epochs/_percent``) to steps.

    At most one form may be given. ``_steps`` is returned unchanged; the other forms
    are divided by ``batch_size`` (examples), multiplied by ``data_size / batch_size``
    (epochs) or by ``total_steps`` (percent, which must lie in [0, 1]), then rounded to
    the nearest integer (Python's ``round``) and raised to at least 1 unless exactly 0,
    as big_vision's ``utils.steps`` does.

    Args:
        prefix: str, e.g. ``"warmup"``.
        kwargs: dict of keywords to read from.
        data_size: int or None. Training examples per epoch (for ``_epochs``).
        batch_size: int or None. Examples per step (for ``_examples``, ``_epochs``).
        total_steps: int or None. Length of training (for ``_percent``).
        default: returned when no form is present.

    Returns:
        The number of steps (an int, or the ``_steps`` value as given).

    Example:
    >>> from keras_scalevit.schedules import duration_to_steps
    >>> duration_to_steps("warmup", {"warmup_epochs": 2}, data_size=1000, batch_size=10)
    200
    """
    given = [
        f"{prefix}_{s}"
        for s in _DURATION_SUFFIXES
        if kwargs.get(f"{prefix}_{s}") is not None
    ]
    if len(given) > 1:
        raise ValueError(
            f"Only one of {given} may be given for the {prefix!r} duration; received "
            + ", ".join(f"{k}={kwargs[k]!r}" for k in given)
            + "."
        )
    if not given:
        return default
    key = given[0]
    value = kwargs[key]
    _check_number(key, value)
    check_non_negative_float(key, value)  # the value itself is kept (int stays int)

    def to_integer(x):
        # big_vision: round to nearest, but at least one step unless exactly 0.
        return max(1, round(x)) if x else 0

    suffix = key[len(prefix) + 1 :]
    if suffix == "steps":
        return value
    if suffix == "examples":
        if not batch_size:
            raise ValueError(
                f"`{key}`={value!r} needs `batch_size` to convert examples to steps; "
                f"received batch_size={batch_size!r}."
            )
        return to_integer(value / batch_size)
    if suffix == "epochs":
        if not batch_size or not data_size:
            raise ValueError(
                f"`{key}`={value!r} needs `batch_size` and `data_size` to convert "
                f"epochs to steps; received batch_size={batch_size!r}, "
                f"data_size={data_size!r}."
            )
        return to_integer(value * (data_size / batch_size))
    # percent
    if not total_steps:
        raise ValueError(
            f"`{key}`={value!r} needs `total_steps`; received total_steps={total_steps!r}."
        )
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{key}` must be a fraction in [0, 1], got {value!r}.")
    return to_integer(value * total_steps)


def create_learning_rate_schedule(
    total_steps,
    *,
    base=1.0,
    decay_type="stair",
    batch_size=None,
    data_size=None,
    scale_with_batchsize=False,
    **kw,
):
    """big_vision's ``utils.create_learning_rate_schedule`` as a Keras schedule.

    With ``W`` warmup steps, ``C`` cooldown steps, ``T = total_steps`` and
    ``p = clip((step - W) / (T - W), 0, 1)``, the value is ``base`` (times
    ``batch_size / 256`` if ``scale_with_batchsize``) shaped by ``decay_type``:

    - ``"linear"`` / ``"polynomial"``: ``end + (base - end) * (1 - p) ** power``
      (keywords ``power``, default 1, and ``end`` or ``linear_end``, default 0);
    - ``"cosine"``: ``base * 0.5 * (1 + cos(pi * p))``;
    - ``"rsqrt"``: ``base / sqrt(1 + (step + shift - W) / timescale)`` from step ``W``
      on and ``base / sqrt(1 + shift / timescale)`` before (``timescale`` default
      10,000, ``shift`` default 0; both also as ``_steps/_examples/_epochs/_percent``);
    - ``"stair"`` (the default, constant without ``steps``): ``[1, *mults][k] * base``
      where ``mults[i]`` applies from step ``steps[i]`` on;

    then multiplied by ``min(1, step / W)`` if ``W > 0`` (so the value at step 0 is 0)
    and by ``min(1, (T - step) / C)`` if ``C > 0``. Durations ``warmup`` and
    ``cooldown`` may be given as ``_steps``, ``_examples`` (needs ``batch_size``),
    ``_epochs`` (needs ``batch_size`` and ``data_size``) or ``_percent`` of
    ``total_steps``.

    Args:
        total_steps: int. Length of training in optimizer steps.
        base: float. Peak value (the learning rate, or 1.0 for a multiplier).
        decay_type: str. One of `DECAY_TYPES`.
        batch_size: int or None. Used by ``_examples``/``_epochs`` forms and
            ``scale_with_batchsize``.
        data_size: int or None. Training examples per epoch (``_epochs`` forms).
        scale_with_batchsize: bool. Multiply ``base`` by ``batch_size / 256``.
        **kw: big_vision's decay and duration keywords (see above).

    Returns:
        A `BigVisionSchedule`.

    Example:
    >>> from keras_scalevit.schedules import create_learning_rate_schedule
    >>> sched = create_learning_rate_schedule(
    ...     1_000_000, base=8e-4, decay_type="rsqrt", timescale=10_000,
    ...     warmup_steps=10_000, cooldown_steps=50_000)
    >>> round(float(sched(10_000)), 8)
    0.0008
    """
    check_kwargs(
        "create_learning_rate_schedule",
        kw,
        sorted(_KNOWN_KEYWORDS)
        + [
            "total_steps",
            "base",
            "decay_type",
            "batch_size",
            "data_size",
            "scale_with_batchsize",
        ],
    )
    total_steps = check_positive_int("total_steps", total_steps)
    _check_number("base", base)
    check_non_negative_float("base", base)
    _check_decay_type(decay_type)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if data_size is not None:
        data_size = check_positive_int("data_size", data_size)
    scale_with_batchsize = check_bool("scale_with_batchsize", scale_with_batchsize)
    sizes = dict(data_size=data_size, batch_size=batch_size, total_steps=total_steps)
    warmup = duration_to_steps("warmup", kw, **sizes)
    cooldown = duration_to_steps("cooldown", kw, **sizes)
    if scale_with_batchsize:
        if not batch_size:
            raise ValueError(
                "`scale_with_batchsize=True` needs `batch_size`; received "
                f"batch_size={batch_size!r}."
            )
        # Goyal et al.'s linear scaling rule, reference batch 256 (big_vision).
        base = base * batch_size / 256.0
    config = dict(
        total_steps=total_steps,
        base=base,
        decay_type=decay_type,
        warmup_steps=warmup,
        cooldown_steps=cooldown,
    )
    if decay_type in ("linear", "polynomial"):
        config["power"] = kw.get("power", 1)
        config["end"] = kw.get("end", kw.get("linear_end", 0))
    elif decay_type == "rsqrt":
        config["timescale"] = duration_to_steps(
            "timescale", kw, **sizes, default=kw.get("timescale", 10_000)
        )
        config["shift"] = duration_to_steps(
            "shift", kw, **sizes, default=kw.get("shift", 0)
        )
    elif decay_type == "stair":
        config["steps"] = list(kw.get("steps", []))
        config["mults"] = list(kw.get("mults", []))
    return BigVisionSchedule(**config)


@keras.saving.register_keras_serializable(package="keras_scalevit")
class BigVisionSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A big_vision learning-rate schedule with every duration already in steps.

    Usually made by `create_learning_rate_schedule`, which converts big_vision's
    ``_epochs``/``_examples``/``_percent`` keywords; this class takes the resolved
    numbers, so its config round-trips exactly. Calling it on an integer step (a
    Python int or an integer tensor, e.g. an optimizer's ``iterations``) returns a
    float32 tensor of the step's shape (so a whole array of steps can be evaluated
    at once).

    Args:
        total_steps: int >= 1. Length of training in steps.
        base: float >= 0. Peak value.
        decay_type: str. One of ``"linear"``, ``"polynomial"``, ``"cosine"``,
            ``"rsqrt"``, ``"stair"``.
        warmup_steps: int. Linear warmup length (0: none); must be < total_steps
            unless total_steps <= 1.
        cooldown_steps: int. Linear cooldown to 0 over the last steps (0: none);
            at most ``total_steps``. Warmup and cooldown may overlap: both ramps
            multiply, as in big_vision (the peak is then never reached).
        power: number. Exponent of ``"linear"``/``"polynomial"`` decay (an int is
            applied by repeated multiplication, as ``jnp`` does).
        end: float. Final value of ``"linear"``/``"polynomial"`` decay.
        timescale: number. ``"rsqrt"`` timescale in steps.
        shift: number. ``"rsqrt"`` shift in steps.
        steps: list of int. ``"stair"`` boundaries.
        mults: list of float. ``"stair"`` multipliers, one per boundary.
        name: optional str.

    Example:
    >>> import keras
    >>> from keras_scalevit.schedules import BigVisionSchedule
    >>> sched = BigVisionSchedule(200, base=0.5, decay_type="cosine", warmup_steps=20)
    >>> float(sched(0)), round(float(sched(20)), 6)
    (0.0, 0.5)
    >>> clone = keras.optimizers.schedules.deserialize(
    ...     keras.optimizers.schedules.serialize(sched))
    >>> clone.get_config() == sched.get_config()
    True
    """

    def __init__(
        self,
        total_steps,
        base=1.0,
        decay_type="stair",
        warmup_steps=0,
        cooldown_steps=0,
        power=1,
        end=0.0,
        timescale=10_000,
        shift=0,
        steps=(),
        mults=(),
        name=None,
    ):
        _check_decay_type(decay_type)
        # A run has at least one step (0 steps would divide by zero: NaN).
        total_steps = check_positive_int("total_steps", total_steps)
        for arg, value in dict(
            total_steps=total_steps,
            base=base,
            warmup_steps=warmup_steps,
            cooldown_steps=cooldown_steps,
            power=power,
            end=end,
            timescale=timescale,
            shift=shift,
        ).items():
            _check_number(arg, value)
        for arg, value in dict(
            base=base,
            warmup_steps=warmup_steps,
            cooldown_steps=cooldown_steps,
        ).items():
            check_non_negative_float(arg, value)
        if total_steps > 1 and warmup_steps >= total_steps:
            raise ValueError(
                "`warmup_steps` must be < `total_steps` (the warmup would never "
                f"reach the peak), got warmup_steps={warmup_steps!r} with "
                f"total_steps={total_steps!r}."
            )
        if cooldown_steps > total_steps:
            raise ValueError(
                "`cooldown_steps` must be <= `total_steps` (a longer cooldown starts "
                f"before the run), got cooldown_steps={cooldown_steps!r} with "
                f"total_steps={total_steps!r}."
            )
        if decay_type == "rsqrt" and timescale <= 0:
            raise ValueError(f"`timescale` must be > 0, got {timescale!r}.")
        if decay_type == "rsqrt" and shift <= -timescale:
            raise ValueError(
                f"`shift` must be > -timescale ({-timescale!r}): 1 + shift / "
                f"timescale is square-rooted, got shift={shift!r}."
            )
        if decay_type in ("linear", "polynomial") and power < 0:
            raise ValueError(
                f"`power` must be >= 0 (a negative power is infinite at the end of "
                f"the run), got {power!r}."
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"`name` must be a string or None, got {name!r}.")
        steps, mults = list(steps), list(mults)
        if len(steps) != len(mults):
            raise ValueError(
                "`steps` and `mults` must have the same length; received "
                f"steps={steps!r}, mults={mults!r}."
            )
        for i, v in enumerate(steps):
            check_int(f"steps[{i}]", v, minimum=0)
        for i, v in enumerate(mults):
            _check_number(f"mults[{i}]", v)
            check_non_negative_float(f"mults[{i}]", v)
        if steps != sorted(steps):
            raise ValueError(f"`steps` must be sorted ascending, got {steps!r}.")
        self.total_steps = total_steps
        self.base = base
        self.decay_type = decay_type
        self.warmup_steps = warmup_steps
        self.cooldown_steps = cooldown_steps
        self.power = power
        self.end = end
        self.timescale = timescale
        self.shift = shift
        self.steps = steps
        self.mults = mults
        self.name = name

    def __call__(self, step):
        step = ops.cast(ops.convert_to_tensor(step), "float32")
        lr = self.base
        total, warm = self.total_steps, self.warmup_steps
        if self.decay_type in ("linear", "polynomial", "cosine"):
            progress = _div_const(step - float(warm), total - warm)
            progress = ops.clip(progress, 0.0, 1.0)
        if self.decay_type in ("linear", "polynomial"):
            end = self.end
            lr = ops.add(
                ops.multiply(lr - end, _power(1.0 - progress, self.power)), end
            )
        elif self.decay_type == "cosine":
            lr = ops.multiply(lr * 0.5, 1.0 + ops.cos(ops.multiply(math.pi, progress)))
        elif self.decay_type == "rsqrt":
            lr = self._rsqrt(step, lr)
        else:  # stair
            lr = self._stair(step, lr)
        lr = ops.cast(lr, "float32")
        if warm:
            lr = lr * ops.minimum(1.0, _div_const(step, warm))
        if self.cooldown_steps:
            lr = lr * ops.minimum(
                1.0, _div_const(float(total) - step, self.cooldown_steps)
            )
        return ops.cast(lr, "float32")

    def _rsqrt(self, step, lr):
        warm, shift, tau = self.warmup_steps, self.shift, self.timescale
        if isinstance(shift, int) and isinstance(warm, int):
            # big_vision adds in int32; exact in float32 below 2**24 steps.
            offset = step + float(shift - warm)
        else:
            offset = (step + float(shift)) - float(warm)
        decaying = ops.divide(lr, ops.sqrt(1.0 + _div_const(offset, tau)))
        # In warmup big_vision evaluates `1 + shift / t` in Python (double).
        in_warmup = ops.divide(
            lr, ops.sqrt(ops.convert_to_tensor(1 + shift / tau, "float32"))
        )
        return ops.where(step >= float(warm), decaying, in_warmup)

    def _stair(self, step, lr):
        if not self.steps:
            return ops.multiply(ops.ones_like(step), lr)
        # searchsorted(steps, step + 1, side="left") == #{s in steps: s <= step}.
        bounds = ops.convert_to_tensor([float(s) for s in self.steps], "float32")
        passed = ops.greater_equal(ops.expand_dims(step, -1), bounds)
        index = ops.sum(ops.cast(passed, "int32"), axis=-1)
        table = ops.convert_to_tensor([1.0] + [float(m) for m in self.mults], "float32")
        return ops.multiply(
            ops.convert_to_tensor(lr, "float32"), ops.take(table, index)
        )

    def get_config(self):
        config = dict(
            total_steps=self.total_steps,
            base=self.base,
            decay_type=self.decay_type,
            warmup_steps=self.warmup_steps,
            cooldown_steps=self.cooldown_steps,
            name=self.name,
        )
        if self.decay_type in ("linear", "polynomial"):
            config.update(power=self.power, end=self.end)
        elif self.decay_type == "rsqrt":
            config.update(timescale=self.timescale, shift=self.shift)
        elif self.decay_type == "stair":
            config.update(steps=list(self.steps), mults=list(self.mults))
        return config


def _power(x, power):
    """``x ** power`` as jnp computes it: repeated squaring for integer powers."""
    if isinstance(power, int) and power >= 0:
        result = None
        base = x
        while power:
            if power & 1:
                result = base if result is None else ops.multiply(result, base)
            power >>= 1
            if power:
                base = ops.multiply(base, base)
        return ops.ones_like(x) if result is None else result
    return ops.power(x, float(power))


def _div_const(x, c):
    """``x / c`` for a Python constant ``c``, as XLA compiles it: ``x * (1 / c)``.

    Under ``jax.jit`` XLA rewrites a division by a constant into a multiplication by
    its float32 reciprocal; doing the same here lands closer to big_vision's values.
    """
    with np.errstate(divide="ignore"):  # c = 0 only in degenerate 0/1-step runs
        reciprocal = float(np.float32(1.0) / np.float32(c))
    return ops.multiply(x, reciprocal)
