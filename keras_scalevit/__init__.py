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

__version__ = "0.1.0"
