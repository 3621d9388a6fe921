"""Optimizers of the paper: memory-efficient Adafactor and big_vision's momentum_hp.

Both share big_vision's chain (`BigVisionOptimizer`): global-norm gradient clipping
over trained variables, per-group schedules (``None`` freezes), learning-rate
multipliers and decoupled weight decay selected by ``re.fullmatch`` on
``variable.path`` (first match wins). `from_big_vision_config` translates a big_vision
optimizer config.
"""

from keras_scalevit.optimizers.adafactor import (
    Adafactor,
    adafactor_state_bytes,
    adafactor_state_shapes,
    factored_axes,
)
from keras_scalevit.optimizers.base import (
    DEFAULT_WEIGHT_DECAY_MULTIPLIERS,
    BigVisionOptimizer,
    VariableRule,
    clip_by_global_norm,
    first_match,
    momentum_dtype_and_decay,
    normalize_multipliers,
    normalize_schedule,
)
from keras_scalevit.optimizers.big_vision_config import from_big_vision_config
from keras_scalevit.optimizers.momentum_hp import MomentumHP
