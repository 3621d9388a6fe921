"""Input pipelines: big_vision pp ops, TFDS datasets, mixup and the digits set.

The data path is ``make_dataset(name, split, pp, batch_size)`` -> ``model.fit``;
``pp`` is a big_vision preprocessing string built by ``get_preprocess_fn``.
"""

# Importing the op modules registers their ops with the builder.
from keras_scalevit.data import ops_general, ops_image, randaug  # noqa: F401
from keras_scalevit.data.builder import (
    SEED_KEY,
    available_ops,
    get_preprocess_fn,
    register_op,
)
from keras_scalevit.data.digits import DIGITS_NAME, ScalevitDigits
from keras_scalevit.data.mixup import mixup, sample_mixup_weight
from keras_scalevit.data.pipeline import (
    check_batch_size,
    get_builder,
    get_num_examples,
    make_dataset,
    make_eval_dataset,
)
from keras_scalevit.data.randaug import keras_cv_available

__all__ = [
    "DIGITS_NAME",
    "SEED_KEY",
    "ScalevitDigits",
    "available_ops",
    "check_batch_size",
    "get_builder",
    "get_num_examples",
    "get_preprocess_fn",
    "keras_cv_available",
    "make_dataset",
    "make_eval_dataset",
    "mixup",
    "register_op",
    "sample_mixup_weight",
]
