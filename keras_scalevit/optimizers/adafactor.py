"""The paper's memory-efficient Adafactor (big_vision's ``scale_by_adafactor``).

Per variable, at update count ``t`` (spec §3.2):

1. ``beta2_t = min(beta2_cap, 1 - (t - decay_offset + 1) ** -decay_rate)`` (0 at t = 0);
2. ``q = g**2 + epsilon``;
3. factored second moment (optax ``scale_by_factored_rms`` rules) when the variable
   has >= 2 dims and its second-largest dim is >= ``min_dim_size_to_factor``: running
   means of ``q`` over the largest axis (``v_row``) and the second-largest (``v_col``),
   ``u = g / sqrt(v_row / mean(v_row) (x) v_col)``; otherwise a full ``v`` and
   ``u = g / sqrt(v)``;
4. optional block-RMS clipping ``u / max(1, rms(u) / clipping_threshold)``;
5. momentum as an EMA kept in ``momentum_dtype``: ``m~ = (1 - mu) * u + mu_d * m`` in
   float32 with ``mu_d`` = ``mu`` rounded to ``momentum_dtype`` (bfloat16: 0.8984375),
   ``m~`` is the update and ``bfloat16(m~)`` the stored state.

No bias correction, no relative step size, no parameter-scale factor. The learning
rate, multipliers, decoupled weight decay and schedules come from
`BigVisionOptimizer`.
"""

import keras
import numpy as np
from keras import ops

from keras_scalevit.optimizers.base import (
    BigVisionOptimizer,
    _float32,
    momentum_dtype_and_decay,
)
from keras_scalevit.utils.validation import (
    check_float,
    check_int,
    check_positive_float,
    check_probability,
)


def factored_axes(shape, min_dim_size_to_factor=32):
    """Which axes Adafactor factors for a variable of ``shape`` (optax's rule).

    Args:
        shape: tuple of ints.
        min_dim_size_to_factor: int. Factor only if the second-largest dim is at
            least this.

    Returns:
        ``(a1, a0)``: ``a0`` the largest axis (``v_row`` drops it) and ``a1`` the
        second-largest (``v_col`` drops it), from a stable ascending sort (ties: the
        later axis counts as larger); or None when not factored.

    Example:
    >>> from keras_scalevit.optimizers import factored_axes
    >>> factored_axes((768, 12, 64)), factored_axes((32, 10)), factored_axes((1, 36, 32))
    ((2, 0), None, (2, 1))
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])  # stable
    a1, a0 = order[-2], order[-1]
    if shape[a1] < min_dim_size_to_factor:
        return None
    return a1, a0


def adafactor_state_shapes(shape, *, min_dim_size_to_factor=32, momentum=True):
    """The shapes of Adafactor's state for one variable (excluding step counters).

    Args:
        shape: tuple of ints, the variable's shape.
        min_dim_size_to_factor: int.
        momentum: bool. Whether a full-size momentum is kept.

    Returns:
        dict slot name -> shape (``v_row``/``v_col`` or ``v``, and ``momentum``).

    Example:
    >>> from keras_scalevit.optimizers import adafactor_state_shapes
    >>> adafactor_state_shapes((768, 3072))
    {'v_row': (768,), 'v_col': (3072,), 'momentum': (768, 3072)}
    """
    shape = tuple(int(d) for d in shape)
    axes = factored_axes(shape, min_dim_size_to_factor)
    if axes is None:
        shapes = {"v": shape}
    else:
        a1, a0 = axes
        shapes = {
            "v_row": tuple(d for i, d in enumerate(shape) if i != a0),
            "v_col": tuple(d for i, d in enumerate(shape) if i != a1),
        }
    if momentum:
        shapes["momentum"] = shape
    return shapes


def adafactor_state_bytes(
    shapes, *, momentum_dtype="bfloat16", min_dim_size_to_factor=32, momentum=True
):
    """Bytes of Adafactor state (float32 statistics + momentum) for variable shapes.

    Args:
        shapes: iterable of variable shapes.
        momentum_dtype: dtype of the momentum (``"bfloat16"``: 2 bytes/element).
        min_dim_size_to_factor: int.
        momentum: bool.

    Returns:
        int, the number of bytes (step counters and the learning rate not included).

    Example:
    >>> from keras_scalevit.optimizers import adafactor_state_bytes
    >>> adafactor_state_bytes([(768, 3072)])  # 2 * 768 * 3072 + 4 * (768 + 3072)
    4733952
    """
    dtype, _ = momentum_dtype_and_decay(0.0, momentum_dtype)
    momentum_bytes = np.dtype("float32").itemsize if dtype == "float32" else 2
    total = 0
    for shape in shapes:
        for name, s in adafactor_state_shapes(
            shape, min_dim_size_to_factor=min_dim_size_to_factor, momentum=momentum
        ).items():
            size = int(np.prod(s, dtype=np.int64))
            total += size * (momentum_bytes if name == "momentum" else 4)
    return total


@keras.saving.register_keras_serializable(package="keras_scalevit")
class Adafactor(BigVisionOptimizer):
    """Adafactor as in *Scaling Vision Transformers*: bfloat16 momentum, factored RMS.

    big_vision's ``scale_by_adafactor`` inside its ``optax.make`` chain (global-norm
    clipping, learning rate, multipliers, decoupled weight decay, schedules). State per
    trained variable: a momentum in ``momentum_dtype`` (2 bytes/parameter in
    bfloat16) and float32 factored statistics (``v_row`` + ``v_col``, O(rows + cols))
    or, when not factored, a full float32 ``v``; frozen variables have none. For a
    ViT-B/16 that is 0.514 x the parameter bytes (0.505 x for ViT-G/14), against 2 x
    for Adam.

    Args:
        learning_rate: float or LearningRateSchedule (see `BigVisionOptimizer`).
        momentum: float or None. EMA decay of the first moment; None or 0 disables
            momentum (the scaled update is used directly).
        momentum_dtype: ``"bfloat16"`` (paper), ``"float16"`` or ``"float32"``.
        decay_rate: float. ``beta2_t = 1 - (t - decay_offset + 1) ** -decay_rate``.
        decay_offset: int. Step offset of the beta2 schedule (for fine-tuning).
        beta2_cap: float. Upper bound of ``beta2_t``.
        min_dim_size_to_factor: int. Factor a variable if its second-largest dim is
            at least this (a huge value disables factoring).
        epsilon: float. Added to ``g**2`` before averaging.
        clipping_threshold: float or None. Block-RMS clipping of the update per
            variable (off in the paper).
        weight_decay: float or None. Decoupled, relative to the learning rate:
            ``w -= learning_rate(t) * weight_decay * mult * w`` (big_vision's ``wd`` is
            ``weight_decay * lr``; the paper: ``weight_decay=0.03``).
        weight_decay_multipliers: list of ``(regex, mult)``, first ``re.fullmatch`` on
            ``variable.path`` wins, unmatched: no decay (default ``[(".*/kernel$", 1)]``;
            the paper: ``[(".*head/kernel", 100.0), (".*/kernel", 1.0)]``). A rule
            that decides no variable is reported with a `UserWarning` at `build`.
        learning_rate_multipliers: list of ``(regex, mult > 0)``.
        schedule: big_vision's per-group ``schedule`` (see `BigVisionOptimizer`).
        schedule_kwargs: dict with ``total_steps`` (+ ``batch_size``, ``data_size``)
            for dict entries of ``schedule``.
        **kwargs: `keras.optimizers.Optimizer` arguments: ``global_clipnorm``
            (big_vision's ``grad_clip_norm``), ``use_ema``,
            ``gradient_accumulation_steps``, ``loss_scale_factor``, ``name``, ...

    Example:
    >>> import keras
    >>> from keras_scalevit.optimizers import Adafactor
    >>> from keras_scalevit.schedules import create_learning_rate_schedule
    >>> schedule = create_learning_rate_schedule(
    ...     1000, base=8e-4, decay_type="rsqrt", timescale=100, warmup_steps=100,
    ...     cooldown_steps=200)
    >>> optimizer = Adafactor(
    ...     schedule, weight_decay=0.03, global_clipnorm=1.0,
    ...     weight_decay_multipliers=[(".*head/kernel", 100.0), (".*/kernel", 1.0)])
    >>> model = keras.Sequential([keras.Input((64,)),
    ...     keras.layers.Dense(64, name="body"), keras.layers.Dense(4, name="head")])
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> optimizer.build(model.trainable_variables)
    >>> sorted(optimizer.variable_state(model.layers[0].kernel))  # (64, 64): factored
    ['momentum', 'v_col', 'v_row']
    >>> sorted(optimizer.variable_state(model.layers[1].kernel))  # (64, 4): full v
    ['momentum', 'v']

    Reference:
        Zhai et al., *Scaling Vision Transformers*, CVPR 2022 (arXiv 2106.04560);
        big_vision ``optax.scale_by_adafactor``.
    """

    def __init__(
        self,
        learning_rate,
        *,
        momentum=0.9,
        momentum_dtype="bfloat16",
        decay_rate=0.8,
        decay_offset=0,
        beta2_cap=0.999,
        min_dim_size_to_factor=32,
        epsilon=1e-30,
        clipping_threshold=None,
        weight_decay=None,
        weight_decay_multipliers=None,
        learning_rate_multipliers=None,
        schedule=None,
        schedule_kwargs=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_multipliers=weight_decay_multipliers,
            learning_rate_multipliers=learning_rate_multipliers,
            schedule=schedule,
            schedule_kwargs=schedule_kwargs,
            **kwargs,
        )
        decay_rate = check_positive_float("decay_rate", decay_rate)
        # beta2_t = min(cap, ...): a cap of 0 would leave v at zero (division by 0).
        beta2_cap = check_float(
            "beta2_cap", beta2_cap, minimum=0, maximum=1, min_inclusive=False
        )
        # epsilon = 0 gives 0 / 0 for a variable whose gradient is zero.
        epsilon = check_positive_float("epsilon", epsilon)
        # Any integer (optax's t = step - decay_offset + 1): a positive offset is
        # meant for an optimizer whose step count continues past it (fine-tuning).
        decay_offset = check_int("decay_offset", decay_offset)
        min_dim_size_to_factor = check_int(
            "min_dim_size_to_factor", min_dim_size_to_factor, minimum=1
        )
        if clipping_threshold is not None:
            clipping_threshold = check_positive_float(
                "clipping_threshold", clipping_threshold
            )
        if momentum is not None:
            momentum = check_probability("momentum", momentum)
        dtype, decay = momentum_dtype_and_decay(
            0.0 if momentum is None else momentum, momentum_dtype
        )
        self.momentum = None if momentum is None else float(momentum)
        self.momentum_dtype = dtype
        self.decay_rate = float(decay_rate)
        self.decay_offset = int(decay_offset)
        self.beta2_cap = float(beta2_cap)
        self.min_dim_size_to_factor = int(min_dim_size_to_factor)
        self.epsilon = float(epsilon)
        self.clipping_threshold = (
            None if clipping_threshold is None else float(clipping_threshold)
        )
        # big_vision/optax: `(1 - decay) * u` with the double 1 - 0.9 cast to
        # float32, plus `decay * m` with decay cast to the accumulator dtype.
        self._use_momentum = bool(self.momentum)
        self._one_minus_momentum = _float32(1.0 - (self.momentum or 0.0))
        self._momentum_in_dtype = decay

    def _prepare_slots(self):
        self._momentums, self._v_rows, self._v_cols, self._vs = [], [], [], []
        self._axes = []

    def _create_slots(self, index, variable, trained):
        if not trained:
            for slots in (self._momentums, self._v_rows, self._v_cols, self._vs):
                slots.append(None)
            self._axes.append(None)
            return
        shape = tuple(variable.shape)
        axes = factored_axes(shape, self.min_dim_size_to_factor)
        self._axes.append(axes)
        layout = getattr(variable, "_layout", None)
        if axes is None:
            self._v_rows.append(None)
            self._v_cols.append(None)
            self._vs.append(self._add_slot(variable, "v", shape, layout=layout))
        else:
            a1, a0 = axes
            shapes = adafactor_state_shapes(
                shape, min_dim_size_to_factor=self.min_dim_size_to_factor
            )
            self._v_rows.append(
                self._add_slot(
                    variable,
                    "v_row",
                    shapes["v_row"],
                    layout=self._layout_without_axis(variable, a0),
                )
            )
            self._v_cols.append(
                self._add_slot(
                    variable,
                    "v_col",
                    shapes["v_col"],
                    layout=self._layout_without_axis(variable, a1),
                )
            )
            self._vs.append(None)
        if self._use_momentum:
            self._momentums.append(
                self._add_slot(
                    variable,
                    "momentum",
                    shape,
                    dtype=self.momentum_dtype,
                    layout=layout,
                )
            )
        else:
            self._momentums.append(None)

    def _slot_lists(self):
        return {
            "momentum": self._momentums,
            "v_row": self._v_rows,
            "v_col": self._v_cols,
            "v": self._vs,
        }

    def _step_values(self, step):
        # optax: t = float32(count - offset) + 1; beta2 = min(cap, 1 - t ** -decay_rate).
        t = ops.add(ops.cast(ops.subtract(step, self.decay_offset), "float32"), 1.0)
        beta2 = ops.minimum(
            _float32(self.beta2_cap), ops.subtract(1.0, ops.power(t, -self.decay_rate))
        )
        return {"beta2": beta2, "one_minus_beta2": ops.subtract(1.0, beta2)}

    def _direction(self, gradient, variable, index, values):
        beta2, one_minus = values["beta2"], values["one_minus_beta2"]
        grad_sq = ops.add(ops.square(gradient), _float32(self.epsilon))
        axes = self._axes[index]
        if axes is None:
            v = self._vs[index]
            new_v = ops.add(ops.multiply(beta2, v), ops.multiply(one_minus, grad_sq))
            self.assign(v, new_v)
            update = ops.multiply(gradient, ops.power(new_v, -0.5))
        else:
            a1, a0 = axes
            v_row, v_col = self._v_rows[index], self._v_cols[index]
            new_row = ops.add(
                ops.multiply(beta2, v_row),
                ops.multiply(one_minus, ops.mean(grad_sq, axis=a0)),
            )
            new_col = ops.add(
                ops.multiply(beta2, v_col),
                ops.multiply(one_minus, ops.mean(grad_sq, axis=a1)),
            )
            self.assign(v_row, new_row)
            self.assign(v_col, new_col)
            # v_row lacks a0, so its copy of a1 moves down by one when a1 > a0.
            row_axis = a1 - 1 if a1 > a0 else a1
            row_mean = ops.mean(new_row, axis=row_axis, keepdims=True)
            row_factor = ops.power(ops.divide(new_row, row_mean), -0.5)
            col_factor = ops.power(new_col, -0.5)
            update = ops.multiply(
                ops.multiply(gradient, ops.expand_dims(row_factor, a0)),
                ops.expand_dims(col_factor, a1),
            )
        if self.clipping_threshold is not None:
            rms = ops.sqrt(ops.mean(ops.square(update)))
            update = ops.divide(
                update,
                ops.maximum(1.0, ops.divide(rms, _float32(self.clipping_threshold))),
            )
        if self._use_momentum:
            m = self._momentums[index]
            # Upcast before multiplying: XLA (big_vision's jit) keeps decay * m in
            # float32; the float32 EMA is the update, its rounding the new state.
            new_m = ops.add(
                ops.multiply(self._one_minus_momentum, update),
                ops.multiply(self._momentum_in_dtype, ops.cast(m, "float32")),
            )
            self.assign(m, ops.cast(new_m, self.momentum_dtype))
            update = new_m
        return update

    def _torch_direction(self, gradient, variable, index, values):
        # `_direction` in eager torch: the kernels Keras' ops call, in the same
        # order (bitwise equal), with the state updated in place.
        import torch

        beta2, one_minus = values["beta2"], values["one_minus_beta2"]
        neg_half = ops.convert_to_tensor(-0.5)  # ops.power's exponent tensor
        grad_sq = torch.square(gradient).add_(_float32(self.epsilon))
        axes = self._axes[index]
        if axes is None:
            v = self._vs[index].value
            v.mul_(beta2).add_(grad_sq.mul_(one_minus))
            update = torch.pow(v, neg_half).mul_(gradient)
        else:
            a1, a0 = axes
            v_row, v_col = self._v_rows[index].value, self._v_cols[index].value
            v_row.mul_(beta2).add_(torch.mean(grad_sq, (a0,)).mul_(one_minus))
            v_col.mul_(beta2).add_(torch.mean(grad_sq, (a1,)).mul_(one_minus))
            row_axis = a1 - 1 if a1 > a0 else a1
            row_mean = torch.mean(v_row, (row_axis,), True)
            row_factor = torch.div(v_row, row_mean).pow_(neg_half)
            update = torch.mul(gradient, row_factor.unsqueeze(a0))
            update.mul_(torch.pow(v_col, neg_half).unsqueeze(a1))
        if self.clipping_threshold is not None:
            rms = torch.sqrt(torch.mean(torch.square(update)))
            scale = torch.div(rms, _float32(self.clipping_threshold))
            update.div_(torch.maximum(ops.convert_to_tensor(1.0), scale))
        if self._use_momentum:
            m = self._momentums[index].value
            decayed = torch.mul(m.to(torch.float32), self._momentum_in_dtype)
            update.mul_(self._one_minus_momentum).add_(decayed)
            m.copy_(update)
        return update

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            momentum_dtype=self.momentum_dtype,
            decay_rate=self.decay_rate,
            decay_offset=self.decay_offset,
            beta2_cap=self.beta2_cap,
            min_dim_size_to_factor=self.min_dim_size_to_factor,
            epsilon=self.epsilon,
            clipping_threshold=self.clipping_threshold,
        )
        return config
