"""The paper's scaling science: compute accounting, power-law fits, plots, planner.

- `flops_per_image`, `train_flops`: FLOPs in the paper's convention;
  `tpu_v3_core_days`: FLOPs to core-days at a stated utilisation.
- `fit_saturating_power_law`, `fit_frontier`, `lower_envelope`: ``E = a·(C + d)^-b + c``.
- `plot_scaling`: the paper's Figure 2 style (log-log error vs compute).
- `plan`: per-device memory and FLOPs of a training step, before paying for it.
- ``python -m keras_scalevit.scaling.sweep``: a toy scaling sweep on the digits.
"""

from keras_scalevit.scaling.fit import (
    PowerLawFit,
    fit_frontier,
    fit_saturating_power_law,
    lower_envelope,
)
from keras_scalevit.scaling.flops import (
    flops_per_image,
    model_shape,
    tpu_v3_core_days,
    train_flops,
)
from keras_scalevit.scaling.plan import Plan, plan
from keras_scalevit.scaling.plot import plot_scaling
