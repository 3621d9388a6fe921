"""big_vision's fine-tuning optimizer ``momentum_hp``: SGD with a bfloat16 momentum."""

import keras
from keras import ops

from keras_scalevit.optimizers.base import (
    BigVisionOptimizer,
    _float32,
    momentum_dtype_and_decay,
)
from keras_scalevit.utils.validation import check_bool, check_probability


@keras.saving.register_keras_serializable(package="keras_scalevit")
class MomentumHP(BigVisionOptimizer):
    """SGD with momentum kept in half precision (big_vision ``momentum_hp``).

    optax ``trace`` with a low-precision accumulator: in float32,
    ``m~ = g + mu_d * m`` with ``mu_d`` = ``momentum`` rounded to ``momentum_dtype``
    (bfloat16: 0.8984375); the update is ``m~`` (or ``g + mu * m~`` with
    ``nesterov=True``) and the stored state ``momentum_dtype(m~)``. With
    ``momentum=None`` (or 0) it is plain SGD (big_vision's ``sgd``). Learning rate,
    multipliers, decoupled weight decay, clipping and schedules work as in
    `BigVisionOptimizer`.

    Args:
        learning_rate: float or LearningRateSchedule.
        momentum: float or None. Decay of the trace.
        momentum_dtype: ``"bfloat16"`` (big_vision's default), ``"float16"`` or
            ``"float32"``.
        nesterov: bool. Nesterov momentum.
        weight_decay: float or None. Decoupled, relative to the learning rate
            (big_vision's ``wd`` is ``weight_decay * lr``).
        weight_decay_multipliers: list of ``(regex, mult)``, default
            ``[(".*/kernel$", 1.0)]``.
        learning_rate_multipliers: list of ``(regex, mult > 0)``.
        schedule: big_vision's per-group ``schedule``.
        schedule_kwargs: dict with ``total_steps`` (+ ``batch_size``, ``data_size``).
        **kwargs: `keras.optimizers.Optimizer` arguments (``global_clipnorm``, ...).

    Example:
    >>> import keras
    >>> from keras_scalevit.optimizers import MomentumHP
    >>> from keras_scalevit.schedules import create_learning_rate_schedule
    >>> optimizer = MomentumHP(
    ...     create_learning_rate_schedule(500, base=0.01, decay_type="cosine",
    ...                                   warmup_steps=100),
    ...     global_clipnorm=1.0)
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> optimizer.build(model.trainable_variables)
    >>> optimizer.variable_state(model.layers[0].kernel)["momentum"].dtype
    'bfloat16'
    """

    def __init__(
        self,
        learning_rate,
        *,
        momentum=0.9,
        momentum_dtype="bfloat16",
        nesterov=False,
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
        if momentum is not None:
            momentum = check_probability("momentum", momentum)
        nesterov = check_bool("nesterov", nesterov)
        dtype, decay = momentum_dtype_and_decay(
            0.0 if momentum is None else momentum, momentum_dtype
        )
        self.momentum = None if momentum is None else float(momentum)
        self.momentum_dtype = dtype
        self.nesterov = nesterov
        self._use_momentum = bool(self.momentum)
        self._momentum_in_dtype = decay
        # optax's nesterov step multiplies the float32 trace, so it uses float32(mu).
        self._momentum_f32 = _float32(self.momentum or 0.0)

    def _prepare_slots(self):
        self._momentums = []

    def _create_slots(self, index, variable, trained):
        if trained and self._use_momentum:
            self._momentums.append(
                self._add_slot(
                    variable,
                    "momentum",
                    variable.shape,
                    dtype=self.momentum_dtype,
                    layout=getattr(variable, "_layout", None),
                )
            )
        else:
            self._momentums.append(None)

    def _slot_lists(self):
        return {"momentum": self._momentums}

    def _direction(self, gradient, variable, index, values):
        if not self._use_momentum:
            return gradient
        m = self._momentums[index]
        new_m = ops.add(
            gradient, ops.multiply(self._momentum_in_dtype, ops.cast(m, "float32"))
        )
        self.assign(m, ops.cast(new_m, self.momentum_dtype))
        if self.nesterov:
            return ops.add(gradient, ops.multiply(self._momentum_f32, new_m))
        return new_m

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            momentum_dtype=self.momentum_dtype,
            nesterov=self.nesterov,
        )
        return config
