"""keras-scalevit: *Scaling Vision Transformers* (Zhai et al.) as a Keras 3 library."""

from keras_scalevit import (
    convert,
    data,
    distribution,
    evaluation,
    losses,
    models,
    optimizers,
    schedules,
    transfer,
    utils,
)
from keras_scalevit.models import decode_predictions, list_presets

__version__ = "0.1.0"
