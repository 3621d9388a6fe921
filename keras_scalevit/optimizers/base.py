"""big_vision's per-variable optimizer rules on top of `keras.optimizers.Optimizer`.

big_vision's ``optax.make`` wraps every optimizer in the same chain (spec §3.1):

    p <- p - s_g(t) * (lr * lr_mult * A(clip(g)) + wd * wd_mult * p)

with global-norm gradient clipping over the trained (non-frozen) variables, one
schedule ``s_g`` per group of variables (``None`` freezes a group), learning-rate
multipliers and decoupled weight decay chosen per variable by regular expressions
(``re.fullmatch`` on the variable path, first matching pattern wins). This module
holds that chain once; `Adafactor` and `MomentumHP` only supply ``A``.

Weight decay follows Keras' convention: ``weight_decay`` is relative to the learning
rate, so a variable with multiplier ``mult`` loses ``learning_rate(t) * weight_decay *
mult * w`` per step, where ``learning_rate(t)`` includes the variable's group schedule.
A big_vision config's ``wd`` (which is *not* multiplied by ``lr``, only by the
schedule) is therefore ``weight_decay = wd / lr``; the paper's "0.03 body, 3.0 head
relative to the learning rate" is ``weight_decay=0.03`` with multipliers
``[(".*head/kernel", 100.0), (".*/kernel", 1.0)]``.
"""

import dataclasses
import functools
import inspect
import numbers
import re
import warnings

import keras
import ml_dtypes  # a Keras dependency; NumPy has no bfloat16
import numpy as np
from keras import ops

from keras_scalevit.schedules import create_learning_rate_schedule
from keras_scalevit.utils.validation import (
    check_bool,
    check_int,
    check_kwargs,
    check_non_negative_float,
    check_positive_float,
    check_probability,
)

# big_vision's default `wd_mults`: only kernels decay.
DEFAULT_WEIGHT_DECAY_MULTIPLIERS = ((".*/kernel$", 1.0),)

_LR_SCHEDULE = keras.optimizers.schedules.LearningRateSchedule

_FLOAT_STATE_DTYPES = ("float32", "bfloat16", "float16")

# `keras.optimizers.Optimizer` keywords accepted through ``**kwargs``.
_KERAS_OPTIMIZER_KWARGS = (
    "name",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)


def momentum_dtype_and_decay(momentum, momentum_dtype, argument="momentum_dtype"):
    """Validates a momentum accumulator dtype and rounds ``momentum`` to it.

    JAX multiplies a low-precision accumulator by the Python constant cast to the
    accumulator's dtype, so big_vision's effective decay with a bfloat16 momentum is
    bfloat16(0.9) = 0.8984375 (spec §12.1).

    Args:
        momentum: float, the decay constant.
        momentum_dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        argument: name used in error messages.

    Returns:
        ``(dtype_name, decay_in_dtype)``, the latter a Python float.

    Example:
    >>> from keras_scalevit.optimizers import momentum_dtype_and_decay
    >>> momentum_dtype_and_decay(0.9, "bfloat16")
    ('bfloat16', 0.8984375)
    """
    momentum = check_probability("momentum", momentum)
    try:
        dtype = keras.backend.standardize_dtype(momentum_dtype)
    except (ValueError, TypeError):
        dtype = None
    if dtype not in _FLOAT_STATE_DTYPES:
        raise ValueError(
            f"`{argument}` must be a floating-point dtype, one of {_FLOAT_STATE_DTYPES}, "
            f"got {momentum_dtype!r}."
        )
    if dtype == "bfloat16":
        rounded = float(np.asarray(momentum, dtype=ml_dtypes.bfloat16))
    else:
        rounded = float(np.asarray(momentum, dtype=dtype))
    return dtype, rounded


def _float32(x):
    # Python constants rounded once to float32, so every backend multiplies by the
    # same value whatever its scalar-promotion rules.
    return float(np.float32(x))


@dataclasses.dataclass(frozen=True)
class VariableRule:
    """What the patterns decided for one variable (resolved once, in `build`).

    Attributes:
        path: the variable's path the patterns were matched against.
        frozen: True if its schedule entry is ``None`` (never updated, no state).
        group: index of its schedule in `BigVisionOptimizer.group_schedules`, or
            None when the optimizer has no per-group schedule.
        learning_rate_multiplier: float.
        weight_decay_multiplier: float (0.0: not decayed).

    Example:
    >>> from keras_scalevit.optimizers import VariableRule
    >>> rule = VariableRule("head/kernel", frozen=False, group=0,
    ...                     learning_rate_multiplier=1.0,
    ...                     weight_decay_multiplier=100.0)
    >>> rule.frozen, rule.weight_decay_multiplier
    (False, 100.0)
    """

    path: str
    frozen: bool
    group: object
    learning_rate_multiplier: float
    weight_decay_multiplier: float


def _compile_pattern(argument, pattern):
    if not isinstance(pattern, str):
        raise TypeError(
            f"Patterns in `{argument}` must be strings (regular expressions); "
            f"received {pattern!r}."
        )
    if pattern.startswith("/"):
        # big_vision's rule: variable paths never start with "/".
        raise ValueError(
            f"Pattern {pattern!r} in `{argument}` starts with '/'; variable paths "
            "never do (e.g. 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel')."
        )
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"Pattern {pattern!r} in `{argument}` is not a valid regular expression: {e}."
        ) from None


def _pairs(argument, rules):
    """Normalises ``[(pattern, value), ...]`` or ``{pattern: value}`` to a tuple of pairs."""
    if isinstance(rules, dict):
        rules = list(rules.items())
    if isinstance(rules, (str, bytes)) or not isinstance(rules, (list, tuple)):
        raise TypeError(
            f"`{argument}` must be a list of (pattern, value) pairs; received {rules!r}."
        )
    pairs = []
    for entry in rules:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise TypeError(
                f"Each entry of `{argument}` must be a (pattern, value) pair; "
                f"received {entry!r}."
            )
        _compile_pattern(argument, entry[0])
        pairs.append((entry[0], entry[1]))
    return tuple(pairs)


def normalize_multipliers(argument, rules, *, allow_zero):
    """Validates big_vision-style ``[(pattern, multiplier), ...]`` rules.

    Args:
        argument: str. Argument name used in error messages.
        rules: list of (regex, number) pairs, a dict, or None.
        allow_zero: bool. Whether a multiplier of 0 is allowed (weight decay) or
            must be > 0 (learning rate: freeze with a ``None`` schedule instead).

    Returns:
        A tuple of ``(pattern, float)`` pairs (empty for None).

    Example:
    >>> from keras_scalevit.optimizers import normalize_multipliers
    >>> normalize_multipliers("m", [(".*head/kernel", 100), (".*/kernel", 1)],
    ...                       allow_zero=True)
    (('.*head/kernel', 100.0), ('.*/kernel', 1.0))
    """
    if rules is None:
        return ()
    pairs = []
    allowed = ">= 0" if allow_zero else "> 0 (freeze with a None schedule instead)"
    for pattern, mult in _pairs(argument, rules):
        if isinstance(mult, np.ndarray) and mult.ndim == 0:
            mult = mult.item()
        if isinstance(mult, bool) or not isinstance(mult, numbers.Real):
            raise TypeError(
                f"`{argument}` multipliers must be finite numbers {allowed}, got "
                f"{mult!r} for pattern {pattern!r}."
            )
        if not np.isfinite(mult) or mult < 0 or (mult == 0 and not allow_zero):
            raise ValueError(
                f"`{argument}` multipliers must be finite numbers {allowed}, got "
                f"{mult!r} for pattern {pattern!r}."
            )
        pairs.append((pattern, float(mult)))
    return tuple(pairs)


def _check_learning_rate(learning_rate):
    """A schedule, a callable or a Variable pass; a number must be finite, >= 0."""
    if isinstance(learning_rate, (_LR_SCHEDULE, keras.Variable)) or callable(
        learning_rate
    ):
        return learning_rate
    if isinstance(learning_rate, np.ndarray) and learning_rate.ndim == 0:
        learning_rate = learning_rate.item()
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise TypeError(
            "`learning_rate` must be a finite number >= 0 or a "
            "keras.optimizers.schedules.LearningRateSchedule, got "
            f"{learning_rate!r}."
        )
    return check_non_negative_float("learning_rate", learning_rate)


def _check_keras_options(kwargs):
    """Checks the `keras.optimizers.Optimizer` keywords (Keras accepts some nonsense:
    ``global_clipnorm=-1`` silently disables clipping)."""
    for key in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
        if kwargs.get(key) is not None:
            kwargs[key] = check_positive_float(key, kwargs[key])
    if "use_ema" in kwargs:
        kwargs["use_ema"] = check_bool("use_ema", kwargs["use_ema"])
    if kwargs.get("use_ema") and "ema_momentum" in kwargs:
        kwargs["ema_momentum"] = check_probability(
            "ema_momentum", kwargs["ema_momentum"]
        )
    if kwargs.get("ema_overwrite_frequency") is not None:
        kwargs["ema_overwrite_frequency"] = check_int(
            "ema_overwrite_frequency", kwargs["ema_overwrite_frequency"], minimum=1
        )
    if kwargs.get("gradient_accumulation_steps") is not None:
        kwargs["gradient_accumulation_steps"] = check_int(
            "gradient_accumulation_steps",
            kwargs["gradient_accumulation_steps"],
            minimum=2,
        )
    if kwargs.get("name") is not None and not isinstance(kwargs["name"], str):
        raise TypeError(f"`name` must be a string, got {kwargs['name']!r}.")


def _warn_unused_rules(argument, rules, hits, paths):
    """Warns for each (pattern, value) rule that decides no variable."""
    for (pattern, value), n in zip(rules, hits, strict=True):
        if n:
            continue
        if any(re.fullmatch(pattern, p) for p in paths):
            why = "every variable it matches is taken by an earlier rule (first match wins)"
        else:
            shown = ", ".join(repr(p) for p in paths[:3])
            more = ", ..." if len(paths) > 3 else ""
            why = (
                f"it full-matches none of the {len(paths)} variable paths "
                f"({shown}{more})"
            )
        if value is not None and not isinstance(value, numbers.Real):
            value = type(value).__name__  # a schedule object: its class name
        warnings.warn(
            f"`{argument}` rule ({pattern!r}, {value}) applies to no variable: "
            f"{why}. Patterns are matched with re.fullmatch on variable.path.",
            UserWarning,
            stacklevel=3,
        )


def first_match(patterns, path):
    """Index of the first pattern that ``re.fullmatch``-es ``path``, or None.

    Example:
    >>> from keras_scalevit.optimizers import first_match
    >>> first_match([".*head/kernel", ".*/kernel"], "MAPHead_0/MlpBlock_0/Dense_0/kernel")
    1
    """
    for i, pattern in enumerate(patterns):
        if re.fullmatch(pattern, path):
            return i
    return None


def _schedule_from_entry(entry, schedule_kwargs):
    if entry is None or isinstance(entry, _LR_SCHEDULE):
        return entry
    if isinstance(entry, dict):
        if "base" in entry:
            raise ValueError(
                "A per-group schedule dict sets its peak with 'mult' (big_vision), not "
                f"'base'; received {entry!r}."
            )
        if not schedule_kwargs or "total_steps" not in schedule_kwargs:
            raise ValueError(
                "Schedule dicts need `schedule_kwargs` with at least 'total_steps' "
                "(and 'batch_size'/'data_size' for _examples/_epochs forms); received "
                f"schedule_kwargs={schedule_kwargs!r}."
            )
        kw = dict(entry)
        mult = kw.pop("mult", 1.0)
        return create_learning_rate_schedule(**schedule_kwargs, base=mult, **kw)
    raise TypeError(
        "Schedule entries must be a dict of big_vision schedule keywords, a "
        f"LearningRateSchedule, or None (frozen); received {entry!r}."
    )


def normalize_schedule(schedule, schedule_kwargs=None):
    """Turns big_vision's ``schedule`` config into ``((pattern, schedule-or-None), ...)``.

    Args:
        schedule: None (no per-group schedule), a dict or LearningRateSchedule (one
            schedule for every variable), or a list of ``(pattern, entry)`` pairs where
            entry is a dict of `create_learning_rate_schedule` keywords (with an
            optional ``"mult"``, big_vision's peak), a LearningRateSchedule, or None to
            freeze the matched variables.
        schedule_kwargs: dict with ``total_steps`` and optionally ``batch_size`` and
            ``data_size`` (big_vision's ``sched_kw``), used to build dict entries.

    Returns:
        A tuple of ``(pattern, LearningRateSchedule or None)`` pairs, or None.

    Example:
    >>> from keras_scalevit.optimizers import normalize_schedule
    >>> groups = normalize_schedule(
    ...     [("embedding/.*", None), (".*", {"decay_type": "cosine"})],
    ...     {"total_steps": 100})
    >>> [(p, type(s).__name__) for p, s in groups]
    [('embedding/.*', 'NoneType'), ('.*', 'BigVisionSchedule')]
    """
    if schedule is None:
        return None
    if isinstance(schedule, (dict, _LR_SCHEDULE)):
        schedule = [(".*", schedule)]
    return tuple(
        (pattern, _schedule_from_entry(entry, schedule_kwargs))
        for pattern, entry in _pairs("schedule", schedule)
    )


def clip_by_global_norm(grads, clip_norm):
    """optax's ``clip_by_global_norm``: ``g if G < c else (g / G) * c``, ``G = ||grads||``.

    Args:
        grads: list of tensors (None entries pass through).
        clip_norm: float ``c``.

    Returns:
        The list of clipped tensors.

    Example:
    >>> import keras
    >>> import numpy as np
    >>> from keras_scalevit.optimizers import clip_by_global_norm
    >>> grads = [np.array([3.0, 4.0], "float32")]
    >>> (clipped,) = clip_by_global_norm(grads, 1.0)
    >>> [round(float(x), 6) for x in keras.ops.convert_to_numpy(clipped)]
    [0.6, 0.8]
    """
    norm = _global_norm(grads)
    return grads if norm is None else _clip_to_norm(grads, norm, clip_norm)


def _global_norm(grads):
    squares = [ops.sum(ops.square(g)) for g in grads if g is not None]
    return ops.sqrt(functools.reduce(ops.add, squares)) if squares else None


def _clip_to_norm(grads, norm, clip_norm):
    keep = ops.less(norm, clip_norm)
    return [
        None
        if g is None
        else ops.where(
            keep, g, ops.multiply(ops.divide(g, ops.cast(norm, g.dtype)), clip_norm)
        )
        for g in grads
    ]


def _eager_torch():
    """True on the torch backend outside `torch.compile` tracing (eager kernels)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()


def _tf_can_compile(grads):
    """Whether TensorFlow can run the update as one XLA function.

    Not under a `tf.distribute` strategy (its cross-replica updates stay with
    Keras) and not with sparse (`tf.IndexedSlices`) gradients.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.distribute.has_strategy() and not any(
        isinstance(g, tf.IndexedSlices) for g in grads
    )


class _Functions:
    """Compiled functions an optimizer keeps, out of TensorFlow's object tracking."""

    def __init__(self):
        self.functions = {}


def _torch_clip_by_global_norm(grads, clip_norm, in_place=False):
    """`clip_by_global_norm` in eager torch: the same ops, no copy when unclipped.

    With ``in_place`` the gradients are scaled where they are (as torch's
    ``clip_grad_norm_`` does), without a second copy of them (the model's size in
    memory). Copying them also costs more than the norm: ~25 ms
    against ~7 ms for ViT-S/16's gradients alone on 2 CPU cores (fresh pages for
    88 MB); a ViT-S/16 train step on 32 px images fell from 176 to 148 ms, while at
    224 px, where the step's activations leave memory to reuse, the difference is
    within the noise.
    """
    import torch

    grads = [None if g is None else ops.convert_to_tensor(g) for g in grads]
    squares = [torch.sum(torch.square(g)) for g in grads if g is not None]
    if not squares:
        return grads
    norm = torch.sqrt(functools.reduce(torch.add, squares))
    if bool(norm < clip_norm):  # eager: the comparison is a value, not a graph
        return grads
    if in_place:
        return [None if g is None else g.div_(norm).mul_(clip_norm) for g in grads]
    return [None if g is None else torch.div(g, norm).mul_(clip_norm) for g in grads]


def _reduced_layout(layout, axis):
    """The layout of a statistic that drops ``axis`` of its variable (or None)."""
    if isinstance(layout, keras.distribution.TensorLayout):
        axes = tuple(a for i, a in enumerate(layout.axes) if i != axis)
        return keras.distribution.TensorLayout(axes, layout.device_mesh)
    return None


class BigVisionOptimizer(keras.optimizers.Optimizer):
    """Base class: big_vision's gradient clipping, groups, multipliers and weight decay.

    Subclasses implement ``_create_slots(index, variable)`` (in `build`) and
    ``_direction(gradient, variable, index, values)``, which returns the float32 update
    direction ``A`` (before the learning rate); this class scales it by the learning
    rate, the multiplier, adds the decoupled weight decay, applies the group schedule
    and subtracts it from the variable.

    On TensorFlow the whole update runs as one XLA function (outside a
    `tf.distribute` strategy; the same math to float32 round-off), on eager torch
    through torch's own kernels (bitwise the same), on JAX inside the jitted step.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`
            (e.g. from `keras_scalevit.schedules.create_learning_rate_schedule`).
            Evaluated at the update count ``t = iterations`` (so with
            ``gradient_accumulation_steps`` it counts applied updates, like ``beta2``).
        weight_decay: float or None. Decoupled decay relative to the learning rate
            (see the module docstring; big_vision's ``wd`` is ``weight_decay * lr``).
        weight_decay_multipliers: list of ``(regex, multiplier >= 0)``; the first
            pattern that ``re.fullmatch``-es ``variable.path`` gives the multiplier, and
            a variable matching none is not decayed. Default (when ``weight_decay`` is
            set): big_vision's ``[(".*/kernel$", 1.0)]``. A given rule that decides no
            variable (it matches none, or earlier rules take all it matches) is
            reported at `build` with a `UserWarning` naming it (likewise for
            ``learning_rate_multipliers`` and ``schedule`` entries): a warning, not
            an error, because a rule can legitimately be idle for one model (e.g.
            a head rule on a model built without a head).
        learning_rate_multipliers: list of ``(regex, multiplier > 0)``, first match
            wins, unmatched variables use 1.
        schedule: None, or big_vision's ``schedule``: a dict / LearningRateSchedule
            multiplying the learning rate of every variable, or a list of
            ``(regex, dict | LearningRateSchedule | None)`` giving each group its own
            multiplier schedule; ``None`` freezes the group (no update, no state,
            excluded from ``global_clipnorm``). Every variable must match an entry.
        schedule_kwargs: dict, big_vision's ``sched_kw`` (``total_steps``,
            ``batch_size``, ``data_size``), needed when `schedule` contains dicts.
        **kwargs: `keras.optimizers.Optimizer` arguments (``global_clipnorm`` — big_vision's
            ``grad_clip_norm``, computed over the non-frozen gradients —
            ``use_ema``, ``gradient_accumulation_steps``, ``loss_scale_factor``, ...).

    Example:

    The chain is shared by the concrete optimizers (`MomentumHP`, `Adafactor`);
    here the head's bias is frozen and the kernel decays.
    >>> import keras
    >>> import numpy as np
    >>> from keras_scalevit.optimizers import BigVisionOptimizer, MomentumHP
    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(2, name="head")])
    >>> optimizer = MomentumHP(
    ...     0.1, weight_decay=0.01,
    ...     schedule=[(".*head/bias", None), (".*", {"decay_type": "cosine"})],
    ...     schedule_kwargs={"total_steps": 10})
    >>> isinstance(optimizer, BigVisionOptimizer)
    True
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> x = np.ones((8, 4), "float32")
    >>> y = np.zeros((8, 2), "float32")
    >>> bias = keras.ops.convert_to_numpy(model.layers[0].bias).copy()
    >>> _ = model.fit(x, y, epochs=1, verbose=0)
    >>> bool(np.all(keras.ops.convert_to_numpy(model.layers[0].bias) == bias))
    True
    """

    # Eager torch runs `update_step` through `_torch_update_step` (same numerics).
    _eager_torch_update = True
    # TensorFlow runs the whole update (clipping included) as one XLA function.
    _tf_compiled_update = True
    _clip_in_place = False
    _given_norm = None

    def __init__(
        self,
        learning_rate,
        *,
        weight_decay=None,
        weight_decay_multipliers=None,
        learning_rate_multipliers=None,
        schedule=None,
        schedule_kwargs=None,
        **kwargs,
    ):
        own = [
            p
            for p in inspect.signature(type(self).__init__).parameters
            if p not in ("self", "kwargs")
        ]
        check_kwargs(type(self).__name__, kwargs, own + list(_KERAS_OPTIMIZER_KWARGS))
        learning_rate = _check_learning_rate(learning_rate)
        if weight_decay is not None:
            weight_decay = check_non_negative_float("weight_decay", weight_decay)
        _check_keras_options(kwargs)
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
        )
        # Rules a user wrote are reported at `build` if they decide no variable.
        self._check_rules_at_build = weight_decay_multipliers is not None
        if weight_decay_multipliers is None and weight_decay:
            weight_decay_multipliers = DEFAULT_WEIGHT_DECAY_MULTIPLIERS
        self.weight_decay_multipliers = normalize_multipliers(
            "weight_decay_multipliers", weight_decay_multipliers, allow_zero=True
        )
        self.learning_rate_multipliers = normalize_multipliers(
            "learning_rate_multipliers", learning_rate_multipliers, allow_zero=False
        )
        self.schedule = normalize_schedule(schedule, schedule_kwargs)
        self._tf_functions = _Functions()

    # --- per-variable facts, resolved once -------------------------------------

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        wd_patterns = [p for p, _ in self.weight_decay_multipliers]
        lr_patterns = [p for p, _ in self.learning_rate_multipliers]
        rules, unmatched = [], []
        wd_hits = [0] * len(wd_patterns)
        lr_hits = [0] * len(lr_patterns)
        schedule_hits = [0] * len(self.schedule or ())
        # Groups are numbered like big_vision's `schedule_fns`: non-frozen entries in
        # config order.
        group_of_entry, group_schedules = {}, []
        for entry, (_, sched) in enumerate(self.schedule or ()):
            if sched is not None:
                group_of_entry[entry] = len(group_schedules)
                group_schedules.append(sched)
        for variable in variables:
            path = variable.path
            frozen, group = False, None
            if self.schedule is not None:
                entry = first_match([p for p, _ in self.schedule], path)
                if entry is None:
                    unmatched.append(path)
                    continue
                schedule_hits[entry] += 1
                sched = self.schedule[entry][1]
                frozen = sched is None
                group = None if frozen else group_of_entry[entry]
            k = first_match(lr_patterns, path)
            lr_mult = 1.0 if k is None else self.learning_rate_multipliers[k][1]
            if k is not None:
                lr_hits[k] += 1
            k = first_match(wd_patterns, path)
            wd_mult = 0.0 if k is None else self.weight_decay_multipliers[k][1]
            if k is not None:
                wd_hits[k] += 1
            if not self.weight_decay or not self._use_weight_decay(variable):
                wd_mult = 0.0
            rules.append(VariableRule(path, frozen, group, lr_mult, wd_mult))
        if unmatched:
            raise ValueError(
                "Every variable must match an entry of `schedule` (use None to freeze); "
                f"unmatched: {unmatched}. Patterns: {[p for p, _ in self.schedule]}."
            )
        paths = [v.path for v in variables]
        if self.weight_decay and self._check_rules_at_build:
            _warn_unused_rules(
                "weight_decay_multipliers",
                self.weight_decay_multipliers,
                wd_hits,
                paths,
            )
        _warn_unused_rules(
            "learning_rate_multipliers", self.learning_rate_multipliers, lr_hits, paths
        )
        _warn_unused_rules("schedule", self.schedule or (), schedule_hits, paths)
        self._rules = tuple(rules)
        self._group_schedules = tuple(group_schedules)
        self._any_frozen = any(r.frozen for r in rules)
        self._prepare_slots()
        for index, variable in enumerate(variables):
            if rules[index].frozen or self._overwrite_variable_with_gradient(variable):
                self._create_slots(index, variable, trained=False)
            else:
                self._create_slots(index, variable, trained=True)

    @property
    def variable_rules(self):
        """Tuple of `VariableRule`, one per variable the optimizer was built with.

        Example:
        >>> import keras
        >>> from keras_scalevit.optimizers import MomentumHP
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, name="head")])
        >>> optimizer = MomentumHP(0.1, weight_decay=0.01,
        ...                        learning_rate_multipliers=[(".*bias", 2.0)])
        >>> optimizer.build(model.trainable_variables)
        >>> [(r.path.split("/")[-1], r.learning_rate_multiplier,
        ...   r.weight_decay_multiplier) for r in optimizer.variable_rules]
        [('kernel', 1.0, 1.0), ('bias', 2.0, 0.0)]
        """
        return self._rules

    @property
    def group_schedules(self):
        """The per-group multiplier schedules: non-frozen `schedule` entries in order.

        Example:
        >>> import keras
        >>> from keras_scalevit.optimizers import MomentumHP
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, name="head")])
        >>> optimizer = MomentumHP(
        ...     0.1,
        ...     schedule=[(".*bias", None), (".*", {"decay_type": "cosine"})],
        ...     schedule_kwargs={"total_steps": 10})
        >>> optimizer.build(model.trainable_variables)
        >>> len(optimizer.group_schedules)
        1
        >>> [(r.frozen, r.group) for r in optimizer.variable_rules]
        [(False, 0), (True, None)]
        """
        return self._group_schedules

    def variable_state(self, variable):
        """The optimizer's state variables for one model variable, by name.

        Args:
            variable: a variable the optimizer was built with.

        Returns:
            dict mapping slot names (e.g. ``"momentum"``, ``"v_row"``, ``"v_col"``,
            ``"v"``) to `keras.Variable`; empty for frozen variables.

        Example:
        >>> import keras
        >>> from keras_scalevit.optimizers import MomentumHP
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, name="head")])
        >>> optimizer = MomentumHP(
        ...     0.1, schedule=[(".*bias", None), (".*", {"decay_type": "cosine"})],
        ...     schedule_kwargs={"total_steps": 10})
        >>> optimizer.build(model.trainable_variables)
        >>> kernel, bias = model.layers[0].kernel, model.layers[0].bias
        >>> state = optimizer.variable_state(kernel)
        >>> sorted(state), tuple(state["momentum"].shape)
        (['momentum'], (4, 2))
        >>> optimizer.variable_state(bias)
        {}
        """
        index = self._get_variable_index(variable)
        state = {}
        for name, slots in self._slot_lists().items():
            if slots[index] is not None:
                state[name] = slots[index]
        return state

    def _slot_lists(self):
        return {}

    def _prepare_slots(self):
        """Creates the (empty) per-variable slot lists; called once by `build`."""

    def _create_slots(self, index, variable, trained):
        """Appends variable ``index``'s slots (None when ``trained`` is False)."""
        raise NotImplementedError

    def _slot_name(self, variable, name):
        return f"{variable.path.replace('/', '_')}_{name}"

    def _add_slot(self, variable, name, shape, dtype="float32", layout=None):
        return self.add_variable(
            shape=tuple(shape),
            initializer="zeros",
            dtype=dtype,
            name=self._slot_name(variable, name),
            layout=layout,
        )

    @staticmethod
    def _layout_without_axis(variable, axis):
        return _reduced_layout(getattr(variable, "_layout", None), axis)

    # --- the update --------------------------------------------------------------

    def _apply_weight_decay(self, variables):
        # Keras' own decay (every variable, applied before the step) is replaced by
        # big_vision's pattern-selected decay inside `update_step`.
        return

    def _clips(self):
        return bool(self.global_clipnorm and self.global_clipnorm > 0)

    def _clip_gradients(self, grads):
        if self._clips():
            if self._eager_torch_update and _eager_torch():
                return _torch_clip_by_global_norm(
                    grads, self.global_clipnorm, self._clip_in_place
                )
            if self._given_norm is not None:  # formed outside `_tf_compiled_apply`
                return _clip_to_norm(grads, self._given_norm, self.global_clipnorm)
            return clip_by_global_norm(grads, self.global_clipnorm)
        return super()._clip_gradients(grads)

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self._any_frozen:
            # Frozen variables take no part: not in the global norm, no update.
            kept = [
                (g, v)
                for g, v in zip(grads, trainable_variables, strict=True)
                if not self._rules[self._get_variable_index(v)].frozen
            ]
            if not kept:
                return
            grads, trainable_variables = (list(x) for x in zip(*kept, strict=True))
        # The gradients torch's autograd left on the variables (what Keras' torch
        # trainer passes, and drops after the step) may be clipped in place; others
        # are the caller's, and stay as they were.
        self._clip_in_place = _eager_torch() and all(
            g is not None and g is v.value.grad
            for g, v in zip(grads, trainable_variables, strict=True)
        )
        try:
            if self._tf_compiled_update and _tf_can_compile(grads):
                return self._tf_compiled_apply(grads, trainable_variables)
            return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._clip_in_place = False

    def _tf_compiled_apply(self, grads, trainable_variables):
        # In TensorFlow's graph executor (Keras' default on a CPU) the update is ~10
        # kernels per variable, each a pass over it: ~1.5k for ViT-S/16's 199. The
        # Adafactor update alone took 91-112 ms, against 58-69 ms as one XLA
        # function (2 CPU cores); the S/16 train step 0.965x the time. One function
        # per list of variables, traced once; a step that XLA compiles whole
        # inlines it. The global norm is formed before it, in the graph, where each
        # gradient's square runs as soon as the backward pass has produced it
        # (inside, the step was no faster). The same math to float32 round-off:
        # XLA fuses and orders the float32 ops its own way, as in big_vision's
        # jitted update.
        import tensorflow as tf

        key = tuple(id(v) for v in trainable_variables)
        functions = self._tf_functions.functions
        if key not in functions:
            apply = super()._backend_apply_gradients

            def update(grads, norm):
                self._given_norm = norm
                try:
                    apply(list(grads), trainable_variables)
                finally:
                    self._given_norm = None
                return tf.constant(True)  # an XLA function returns a value

            functions[key] = tf.function(update, jit_compile=True, autograph=False)
        grads = tuple(tf.convert_to_tensor(g) for g in grads)
        # (Accumulated gradients are clipped after their mean, in the function.)
        early = self._clips() and not self.gradient_accumulation_steps
        norm = _global_norm(grads) if early else None
        functions[key](grads, norm)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Everything that depends only on the step is computed once per update and
        # handed to `update_step` in place of the learning rate.
        step = self.iterations
        values = {"learning_rate": self._learning_rate_at(step)}
        values["groups"] = [ops.cast(s(step), "float32") for s in self._group_schedules]
        values.update(self._step_values(step))
        if (
            self._eager_torch_update
            and _eager_torch()
            and all(v.dtype == "float32" for v in trainable_variables)
        ):
            return self._torch_update_step(grads, trainable_variables, values)
        return super()._backend_update_step(grads, trainable_variables, values)

    def _torch_update_step(self, grads, trainable_variables, values):
        # `update_step` written in eager torch: the same kernels in the same order
        # (bitwise equal, tests/optimizers), updating state in place. Each Keras op
        # costs ~10 µs of Python on torch: the ViT-S/16 Adafactor update (clipping
        # included) fell from ~200 to ~75 ms, timed apart from the backward pass.
        import torch

        lr = values["learning_rate"]
        with torch.no_grad():
            for gradient, variable in zip(grads, trainable_variables, strict=True):
                index = self._get_variable_index(variable)
                rule = self._rules[index]
                direction = self._torch_direction(
                    ops.cast(gradient, "float32"), variable, index, values
                )
                update = torch.mul(direction, lr)
                if rule.learning_rate_multiplier != 1.0:
                    update.mul_(rule.learning_rate_multiplier)
                value = variable.value
                if rule.weight_decay_multiplier:
                    coefficient = torch.mul(
                        lr, self.weight_decay * rule.weight_decay_multiplier
                    )
                    update.add_(torch.mul(coefficient, value))
                if rule.group is not None:
                    update.mul_(values["groups"][rule.group])
                value.sub_(update)

    def _learning_rate_at(self, step):
        lr = self._learning_rate
        if isinstance(lr, _LR_SCHEDULE):
            lr = lr(step)
        elif callable(lr) and not isinstance(lr, keras.Variable):
            lr = lr()
        return ops.cast(lr, "float32")

    def _step_values(self, step):
        return {}

    def update_step(self, gradient, variable, learning_rate):
        values = learning_rate
        index = self._get_variable_index(variable)
        rule = self._rules[index]
        direction = self._direction(
            ops.cast(gradient, "float32"), variable, index, values
        )
        lr = values["learning_rate"]
        update = ops.multiply(direction, lr)
        if rule.learning_rate_multiplier != 1.0:
            update = ops.multiply(update, rule.learning_rate_multiplier)
        if rule.weight_decay_multiplier:
            coefficient = ops.multiply(
                lr, self.weight_decay * rule.weight_decay_multiplier
            )
            value = ops.cast(variable, "float32")
            update = ops.add(update, ops.multiply(coefficient, value))
        if rule.group is not None:
            update = ops.multiply(update, values["groups"][rule.group])
        self.assign_sub(variable, update)

    def _direction(self, gradient, variable, index, values):
        raise NotImplementedError

    def _torch_direction(self, gradient, variable, index, values):
        # Subclasses may write `_direction` in eager torch for speed.
        return self._direction(gradient, variable, index, values)

    # --- serialization -----------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        schedule = None
        if self.schedule is not None:
            schedule = [
                [p, None if s is None else keras.saving.serialize_keras_object(s)]
                for p, s in self.schedule
            ]
        config.update(
            weight_decay_multipliers=[list(r) for r in self.weight_decay_multipliers],
            learning_rate_multipliers=[list(r) for r in self.learning_rate_multipliers],
            schedule=schedule,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("schedule") is not None:
            config["schedule"] = [
                (
                    p,
                    keras.saving.deserialize_keras_object(
                        s, custom_objects=custom_objects
                    )
                    if isinstance(s, dict) and "class_name" in s
                    else s,
                )
                for p, s in config["schedule"]
            ]
        return super().from_config(config, custom_objects=custom_objects)


__all__ = [
    "BigVisionOptimizer",
    "momentum_dtype_and_decay",
    "DEFAULT_WEIGHT_DECAY_MULTIPLIERS",
    "VariableRule",
    "clip_by_global_norm",
    "first_match",
    "normalize_multipliers",
    "normalize_schedule",
]
