"""keras-scalevit: *Scaling Vision Transformers* (Zhai et al.) as a Keras 3 library."""

from keras_scalevit import convert
from keras_scalevit import data
from keras_scalevit import evaluation
from keras_scalevit import losses
from keras_scalevit import models
from keras_scalevit import optimizers
from keras_scalevit import schedules
from keras_scalevit import transfer

__version__ = "0.1.0"
